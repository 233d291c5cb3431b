"""Answer extraction and equivalence on the awkward cases reasoning models produce."""

from __future__ import annotations

import pytest

from lm_eval_routed.scoring import (
    aime_correct,
    gpqa_choices,
    gpqa_letter,
    last_boxed,
    math_equal,
    pass_at_k,
    strip_reasoning,
)


def test_reasoning_is_stripped():
    assert strip_reasoning("<think>\\boxed{1}</think> so \\boxed{2}") == " so \\boxed{2}"
    assert strip_reasoning("<think>never closed \\boxed{7}") is None
    assert strip_reasoning("plain \\boxed{3}") == "plain \\boxed{3}"


@pytest.mark.parametrize(
    "response,gold,ok",
    [
        ("<think>try \\boxed{41}</think>The answer is \\boxed{042}.", "42", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("first \\boxed{3} then \\boxed{5}", "5", True),
        ("first \\boxed{5} then \\boxed{3}", "5", False),
        ("<think>\\boxed{42}", "42", False),  # unclosed think: no answer
        ("the answer is 42", "42", False),  # missing box
        ("\\boxed{\\frac{3}{4}}", "\\frac{6}{8}", True),
    ],
)
def test_aime_cases(response, gold, ok):
    assert aime_correct(response, gold) is ok


def test_nested_boxed_and_integers():
    assert last_boxed("\\boxed{\\frac{a}{b}} x") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{unclosed") is None
    assert math_equal("007", "7") and not math_equal("70", "7")


@pytest.mark.parametrize(
    "response,letter",
    [
        ("reasoning...\nAnswer: B", "B"),
        ("so \\boxed{C}", "C"),
        ("I pick (D)\n(D)", "D"),
        ("Answer: A\nwait, no.\nAnswer: C", "C"),
        ("<think>Answer: A</think>\nAnswer: B", "B"),
        ("no letter here", None),
        ("<think>Answer: A", None),
    ],
)
def test_gpqa_letters(response, letter):
    assert gpqa_letter(response) == letter


def test_gpqa_shuffle_is_stable_and_varies_by_question():
    a = gpqa_choices("What is 1+1?", "2", ["3", "4", "5"])
    assert a == gpqa_choices("What is 1+1?", "2", ["3", "4", "5"])
    assert a[0][" ABCD".index(a[1]) - 1] == "2"
    slots = {gpqa_choices(f"question {i}", "right", ["w1", "w2", "w3"])[1] for i in range(40)}
    assert slots == set("ABCD")


def test_pass_at_k():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
