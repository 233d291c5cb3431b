"""routed_demo and routed_demo_cot: dataset loaders, few-shot prompts and scoring (see README.md here)."""

from __future__ import annotations

import re
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
    if not isinstance(doc["kind"], str) or doc["kind"] not in TEMPLATES:
        raise ValueError(f"field 'kind' is {doc['kind']!r}; use one of: {', '.join(TEMPLATES)}")
    _check_text(doc, "question", "answer")


def _check_text(doc: dict, *names: str) -> None:
    for name in names:
        if not isinstance(doc[name], str) or not doc[name].strip():
            raise ValueError(f"field {name!r} must be non-empty text, not {doc[name]!r}")


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


# routed_demo_cot: worked arithmetic (make_cot_data.py). Two worked examples of the problem's own shape
# (two steps, or three with a loss); their names are ones no question uses, so none is a question.
COT_INSTRUCTION = 'Solve each problem step by step, then give the result as "Answer: N".\n\n'
COT_SHOTS = {
    2: [
        (
            "Kim has 4 red balls and 6 blue balls. Kim finds 3 more red balls. "
            "How many balls does Kim have in total?",
            "Kim starts with 4 red balls and 6 blue balls.\n"
            "Kim finds 3 more red balls, so Kim has 4 + 3 = 7 red balls.\n"
            "In total Kim has 7 red balls and 6 blue balls, which is 7 + 6 = 13 balls.\n"
            "Answer: 13",
        ),
        (
            "Jon has 8 green cups and 5 yellow cups. Jon finds 4 more green cups. "
            "How many cups does Jon have in total?",
            "Jon starts with 8 green cups and 5 yellow cups.\n"
            "Jon finds 4 more green cups, so Jon has 8 + 4 = 12 green cups.\n"
            "In total Jon has 12 green cups and 5 yellow cups, which is 12 + 5 = 17 cups.\n"
            "Answer: 17",
        ),
    ],
    3: [
        (
            "Kim has 4 red balls and 6 blue balls. Kim finds 3 more red balls. "
            "Then Kim loses 2 blue balls. How many balls does Kim have in total?",
            "Kim starts with 4 red balls and 6 blue balls.\n"
            "Kim finds 3 more red balls, so Kim has 4 + 3 = 7 red balls.\n"
            "Kim loses 2 blue balls, so Kim has 6 - 2 = 4 blue balls.\n"
            "In total Kim has 7 red balls and 4 blue balls, which is 7 + 4 = 11 balls.\n"
            "Answer: 11",
        ),
        (
            "Jon has 8 green cups and 5 yellow cups. Jon finds 4 more green cups. "
            "Then Jon loses 3 yellow cups. How many cups does Jon have in total?",
            "Jon starts with 8 green cups and 5 yellow cups.\n"
            "Jon finds 4 more green cups, so Jon has 8 + 4 = 12 green cups.\n"
            "Jon loses 3 yellow cups, so Jon has 5 - 3 = 2 yellow cups.\n"
            "In total Jon has 12 green cups and 2 yellow cups, which is 12 + 2 = 14 cups.\n"
            "Answer: 14",
        ),
    ],
}
# "Answer:" then an integer (sign and thousands commas allowed) that is not the start of a decimal
ANSWER = re.compile(r"answer\s*:\s*\**\s*(-?\d{1,3}(?:,\d{3})+|-?\d+)(?![\d,]*\.\d)(?!,?\d)", re.I)


def _check_cot_row(doc: dict) -> None:
    _check_text(doc, "question")
    if isinstance(doc["answer"], bool) or not isinstance(doc["answer"], int):
        raise ValueError(f"field 'answer' is {doc['answer']!r}; give the integer result")


def load_demo_cot(**kwargs) -> dict[str, datasets.Dataset]:
    """The committed demo_cot.jsonl as a one-split dataset, every row checked."""
    path = Path(__file__).with_name("demo_cot.jsonl")
    return load_jsonl(path, columns=("question", "answer"), check_row=_check_cot_row)


def cot_steps(doc: dict) -> int:
    """How many steps the problem's solution takes: three when something is lost, else two."""
    return 3 if " loses " in doc["question"] else 2


def cot_doc_to_text(doc: dict) -> str:
    """The instruction, two worked examples of the problem's shape, then the problem and the first
    words of its solution (``Sam starts with``): without them the demo LLM often opens in a style
    of its own ("Let's say ...") and loses the worked examples' steps."""
    shots = "".join(f"Problem: {q}\nSolution:\n{s}\n\n" for q, s in COT_SHOTS[cot_steps(doc)])
    name = doc["question"].split()[0]
    return COT_INSTRUCTION + shots + f"Problem: {doc['question']}\nSolution:\n{name} starts with"


def extract_answer(text: str) -> int | None:
    """The integer after the first "Answer:" of a response; None when there is none.

    Case and spaces around the colon do not matter, nor markdown bold or a trailing full stop or
    unit (``Answer: 12 balls.``); thousands may be comma-separated. A decimal (``Answer: 3.5``) or a
    word (``Answer: twelve``) is no answer, and a later "Answer:" never overrides the first.
    """
    match = ANSWER.search(text)
    return int(match.group(1).replace(",", "")) if match else None


def cot_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """exact_match: the extracted answer equals the problem's."""
    return {"exact_match": float(extract_answer(results[0]) == int(doc["answer"]))}
