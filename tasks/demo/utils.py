"""routed_demo: dataset loader, few-shot prompt and scoring (see README.md beside this file)."""

from __future__ import annotations

from pathlib import Path

import datasets

from lm_eval_routed.evals.task_data import load_jsonl

# three fixed worked examples per kind, none of them among the questions
SHOTS = {
    "capital": [("France", "Paris"), ("Mexico", "Mexico City"), ("Morocco", "Rabat")],
    "opposite": [("hot", "cold"), ("big", "small"), ("good", "bad")],
}
TEMPLATES = {
    "capital": ("Q: What is the capital of {q}?\nA:", " {a}"),
    "opposite": ("Q: What is the opposite of {q}?\nA:", " {a}"),
}


def _check_row(doc: dict) -> None:
    if doc["kind"] not in TEMPLATES:
        raise ValueError(f"field 'kind' is {doc['kind']!r}; use one of: {', '.join(TEMPLATES)}")


def load_demo(**kwargs) -> dict[str, datasets.Dataset]:
    """The committed demo.jsonl as a one-split dataset (no hub, no path relative to the CWD)."""
    path = Path(__file__).with_name("demo.jsonl")
    return load_jsonl(path, columns=("kind", "question", "answer"), check_row=_check_row)


def doc_to_text(doc: dict) -> str:
    """Three worked examples of the same kind, then the question."""
    ask, answer = TEMPLATES[doc["kind"]]
    shots = "".join(ask.format(q=q) + answer.format(a=a) + "\n" for q, a in SHOTS[doc["kind"]])
    return shots + ask.format(q=doc["question"])


def _normalize(text: str) -> str:
    return " ".join(text.strip().strip(".!").lower().split())


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """exact_match on the first line of the answer, case- and trailing-punctuation-insensitive."""
    first_line = results[0].strip().split("\n")[0]
    return {"exact_match": float(_normalize(first_line) == _normalize(doc["answer"]))}
