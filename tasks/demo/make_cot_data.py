"""Write demo_cot.jsonl: small worked arithmetic word problems for the decode-bound demo task (seeded).

Each problem counts objects of two colours through two or three steps (find some more of one colour,
perhaps lose some of the other), and its reference solution works it out one sentence per step before
the last line, ``Answer: N`` (the worked examples in utils.py have the same shape). The demo LLM
writes 60-100 tokens per answer, so its decoding, not the prompt, is most of the work.
``training_rows`` draws more problems from another seed, none with the text of an evaluation problem,
for training the demo routers. Run: python tasks/demo/make_cot_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Sam", "Ana", "Tom", "Mia", "Ben", "Lea", "Max", "Zoe", "Leo", "Ivy", "Eva", "Dan"]
COLOURS = [("red", "blue"), ("green", "yellow"), ("black", "white"), ("big", "small")]
OBJECTS = ["balls", "pens", "cards", "cups", "hats", "boxes", "shells", "stones", "books", "coins"]
N_QUESTIONS, SEED, TRAIN_SEED = 48, 2026, 7


def problem(rng: random.Random) -> dict:
    """One problem: its text, the worked solution and the integer answer."""
    name, (first, second), obj = rng.choice(NAMES), rng.choice(COLOURS), rng.choice(OBJECTS)
    a, b, found = rng.randint(2, 9), rng.randint(3, 9), rng.randint(2, 5)
    question = f"{name} has {a} {first} {obj} and {b} {second} {obj}. "
    question += f"{name} finds {found} more {first} {obj}."
    lines = [
        f"{name} starts with {a} {first} {obj} and {b} {second} {obj}.",
        f"{name} finds {found} more {first} {obj}, so {name} has {a} + {found} = {a + found} {first} {obj}.",
    ]
    if rng.random() < 0.5:  # a third step: some of the other colour are lost
        lost = rng.randint(2, b - 1)
        question += f" Then {name} loses {lost} {second} {obj}."
        lines.append(
            f"{name} loses {lost} {second} {obj}, so {name} has {b} - {lost} = {b - lost} {second} {obj}."
        )
        b -= lost
    a += found
    question += f" How many {obj} does {name} have in total?"
    lines.append(
        f"In total {name} has {a} {first} {obj} and {b} {second} {obj}, "
        f"which is {a} + {b} = {a + b} {obj}."
    )
    lines.append(f"Answer: {a + b}")
    return {"question": question, "solution": "\n".join(lines), "answer": a + b}


def build(n: int = N_QUESTIONS, seed: int = SEED) -> list[dict]:
    """The evaluation problems: ``n`` distinct ones from ``seed``."""
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < n:
        row = problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append({"id": len(rows), **row})
    return rows


def training_rows(n: int, seed: int = TRAIN_SEED) -> list[dict]:
    """``n`` more problems for training routers, none with an evaluation problem's text."""
    held_out = {r["question"] for r in build()}
    rng, rows, seen = random.Random(seed), [], set(held_out)
    while len(rows) < n:
        row = problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("demo_cot.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in build()))
    print(f"wrote {out} ({N_QUESTIONS} rows)")
