"""Answer extraction and scoring shared by the reasoning tasks (AIME, GPQA): model-agnostic.

Reasoning is stripped first: only the text after the last ``</think>`` is scored, and a response that
opened ``<think>`` without closing it has no answer.
"""

from __future__ import annotations

import hashlib
import random
import re
from math import comb

LETTERS = "ABCD"


def strip_reasoning(text: str) -> str | None:
    """The answer part of a response: after the last ``</think>``; None if a think block never closed."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


def math_equal(answer: str, gold: str) -> bool:
    """Integers compare as integers (``042`` == ``42``); anything else goes through math-verify."""
    a, g = answer.strip().strip("$"), gold.strip().strip("$")
    if re.fullmatch(r"[-+]?\d+", a) and re.fullmatch(r"[-+]?\d+", g):
        return int(a) == int(g)
    from math_verify import parse, verify

    return bool(verify(parse(f"${g}$"), parse(f"${a}$")))


def aime_correct(response: str, gold: str) -> bool:
    """Last boxed answer of the answer part equals the gold integer (math-verify for other forms)."""
    body = strip_reasoning(response)
    boxed = last_boxed(body) if body is not None else None
    return boxed is not None and math_equal(boxed, str(gold))


def gpqa_choices(question: str, correct: str, incorrect: list[str]) -> tuple[list[str], str]:
    """The four options in a per-question order and the correct letter.

    The order is seeded by sha256 of the question text: stable across runs, machines and Python hash
    seeds, and different per question (one fixed seed for every question would put every correct
    answer in the same slot).
    """
    options = [correct, *incorrect]
    seed = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    random.Random(seed).shuffle(options)
    return options, LETTERS[options.index(correct)]


_LETTER_PATTERNS = [
    r"answer\s*(?:is|:)?\s*\(?\**\s*([ABCD])\b",  # "Answer: B", "answer is (B)"
    r"\\boxed\{\s*\(?([ABCD])\)?\s*\}",  # \boxed{B}
    r"^\s*\(?([ABCD])\)?[.)]?\s*$",  # a line that is only the letter, "(B)" or "B."
]


def gpqa_letter(response: str) -> str | None:
    """The last well-formed answer letter in the answer part, or None."""
    body = strip_reasoning(response)
    if body is None:
        return None
    found: list[tuple[int, str]] = []
    for pattern in _LETTER_PATTERNS:
        for m in re.finditer(pattern, body, flags=re.IGNORECASE | re.MULTILINE):
            found.append((m.start(1), m.group(1).upper()))
    return max(found)[1] if found else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


PASS_KS = (1, 2, 4, 8, 16, 32, 64)  # the pass@k reported when a task samples n >= k repeats


def repeat_metrics(correct: list[bool]) -> dict[str, object]:
    """Per-problem metrics from the correctness of its n sampled repeats.

    ``pass@k`` (unbiased estimator) for every k in PASS_KS up to n; with n > 1 also the raw
    correctness list under ``mean_over_repeats`` / ``stderr_over_repeats``, which the aggregations
    below turn into the score of each repeat across problems, then its mean and standard error.
    """
    n, c = len(correct), sum(bool(x) for x in correct)
    out: dict[str, object] = {f"pass@{k}": pass_at_k(n, c, k) for k in PASS_KS if k <= n}
    if n > 1:
        flags = [float(bool(x)) for x in correct]
        out["mean_over_repeats"] = flags
        out["stderr_over_repeats"] = flags
    return out


def _per_repeat_scores(items: list[list[float]]) -> list[float]:
    n = min(len(row) for row in items)
    return [sum(row[r] for row in items) / len(items) for r in range(n)]


def mean_over_repeats(items: list[list[float]]) -> float:
    """Mean over repeats of each repeat's score across problems (equals the mean pass@1)."""
    scores = _per_repeat_scores(items)
    return sum(scores) / len(scores)


def stderr_over_repeats(items: list[list[float]]) -> float:
    """Standard error of the per-repeat scores: sample std / sqrt(n repeats)."""
    scores = _per_repeat_scores(items)
    n = len(scores)
    if n < 2:
        return float("nan")
    mean = sum(scores) / n
    return (sum((s - mean) ** 2 for s in scores) / (n - 1) / n) ** 0.5


def keep_all(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval filter step that keeps every repeat (its default filter keeps only the first)."""
    return [list(r) for r in resps]


def unwrap(results: list) -> list:
    """The per-repeat items of one doc: lm-eval hands a filter's list wrapped in one more list."""
    return results[0] if len(results) == 1 and isinstance(results[0], list) else results
