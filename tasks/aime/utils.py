"""routed_aime24 / routed_aime25: data, prompt and scoring (rules in tasks/README.md)."""

from __future__ import annotations

from lm_eval_routed.evals.scoring import (  # noqa: F401  (aggregations named in the YAMLs)
    aime_correct,
    keep_all,
    mean_over_repeats,
    repeat_metrics,
    stderr_over_repeats,
    unwrap,
)
from lm_eval_routed.evals.task_data import load_rows

PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


COLUMNS = (("problem", "Problem"), ("answer", "Answer"))


def _check_row(doc: dict) -> None:
    if not isinstance(_field(doc, "problem"), str):
        raise ValueError(f"field 'problem' is a {type(_field(doc, 'problem')).__name__}, not text")
    answer = _field(doc, "answer")
    if not _is_integer(answer):
        name = "answer" if "answer" in doc else "Answer"
        raise ValueError(
            f"field {name!r} is {answer!r}, not an integer; an AIME answer is a whole number "
            "(0 to 999)"
        )


def _is_integer(value) -> bool:
    """An int, a whole float, or text of one (the hub's answers are text: "204")."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def load_aime24(**kwargs):
    return load_rows(
        "aime24", "HuggingFaceH4/aime_2024", split="train", columns=COLUMNS, check_row=_check_row
    )


def load_aime25(**kwargs):
    return load_rows(
        "aime25", "math-ai/aime25", split="test", columns=COLUMNS, check_row=_check_row
    )


def _field(doc: dict, name: str):
    return doc.get(name, doc.get(name.capitalize()))


def doc_to_text(doc: dict) -> str:
    return PROMPT.format(problem=_field(doc, "problem"))


def doc_to_target(doc: dict) -> str:
    return str(_field(doc, "answer"))


def process_results(doc: dict, results: list[str]) -> dict[str, object]:
    """pass@k over this problem's repeats (and the per-repeat flags for mean/stderr over repeats)."""
    gold = doc_to_target(doc)
    return repeat_metrics([aime_correct(r, gold) for r in unwrap(results)])
