"""routed_gpqa_diamond: data, per-question shuffled choices, prompt and scoring (see tasks/README.md)."""

from __future__ import annotations

from lm_eval_routed.evals.scoring import (  # noqa: F401  (aggregations named in the YAML)
    LETTERS,
    gpqa_choices,
    gpqa_letter,
    keep_all,
    mean_over_repeats,
    repeat_metrics,
    stderr_over_repeats,
    unwrap,
)
from lm_eval_routed.evals.task_data import load_rows

PROMPT = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by "
    "step before answering.\n\n{question}\n\n{options}"
)


TEXT_FIELDS = (
    "Question",
    "Correct Answer",
    "Incorrect Answer 1",
    "Incorrect Answer 2",
    "Incorrect Answer 3",
)


def _check_row(doc: dict) -> None:
    for name in TEXT_FIELDS:
        if not isinstance(doc.get(name), str) or not doc[name].strip():
            raise ValueError(f"field {name!r} must be non-empty text, not {doc.get(name)!r}")


def load_gpqa_diamond(**kwargs):
    return load_rows(
        "gpqa_diamond",
        "Idavidrein/gpqa",
        split="train",
        config="gpqa_diamond",
        gated=True,
        columns=TEXT_FIELDS,
        check_row=_check_row,
    )


def _choices(doc: dict) -> tuple[list[str], str]:
    wrong = [doc[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
    return gpqa_choices(doc["Question"].strip(), doc["Correct Answer"].strip(), wrong)


def doc_to_text(doc: dict) -> str:
    options, _ = _choices(doc)
    lines = "\n".join(f"{letter}) {text}" for letter, text in zip(LETTERS, options))
    return PROMPT.format(question=doc["Question"].strip(), options=lines)


def doc_to_target(doc: dict) -> str:
    return _choices(doc)[1]


def process_results(doc: dict, results: list[str]) -> dict[str, object]:
    """pass@k over repeats of (extracted letter == correct letter), plus per-repeat flags."""
    gold = doc_to_target(doc)
    return repeat_metrics([gpqa_letter(r) == gold for r in unwrap(results)])
