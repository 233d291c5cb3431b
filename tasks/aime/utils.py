"""routed_aime24 / routed_aime25: data, prompt and scoring (rules in tasks/README.md)."""

from __future__ import annotations

from lm_eval_routed.scoring import aime_correct
from lm_eval_routed.task_data import load_rows

PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def load_aime24(**kwargs):
    return load_rows("aime24", "HuggingFaceH4/aime_2024", split="train")


def load_aime25(**kwargs):
    return load_rows("aime25", "math-ai/aime25", split="test")


def _field(doc: dict, name: str):
    return doc.get(name, doc.get(name.capitalize()))


def doc_to_text(doc: dict) -> str:
    return PROMPT.format(problem=_field(doc, "problem"))


def doc_to_target(doc: dict) -> str:
    return str(_field(doc, "answer"))


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1 = mean correctness over this problem's repeats."""
    gold = doc_to_target(doc)
    return {"pass@1": sum(aime_correct(r, gold) for r in results) / len(results)}
