"""Answer extraction and equivalence on the awkward cases reasoning models produce."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from collections import OrderedDict

import pytest

from lm_eval_routed.evals.lcb_grading import stdout_matches
from lm_eval_routed.evals.livecodebench import (
    build_prompt,
    decode_tests,
    extract_code,
    func_name,
)
from lm_eval_routed.evals.scoring import (
    aime_correct,
    gpqa_choices,
    gpqa_letter,
    last_boxed,
    math_equal,
    mean_over_repeats,
    pass_at_k,
    repeat_metrics,
    stderr_over_repeats,
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


def test_repeat_metrics_and_aggregations():
    m = repeat_metrics([True, False, False, True])
    assert m["pass@1"] == 0.5 and m["pass@2"] == pytest.approx(1 - 1 / 6)
    assert m["pass@4"] == 1.0 and "pass@8" not in m
    assert repeat_metrics([True]) == {"pass@1": 1.0}  # n = 1: no spread over repeats to report
    items = [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]  # per-repeat scores 1.0, 0.5, 0.5
    assert mean_over_repeats(items) == pytest.approx(2 / 3)
    assert stderr_over_repeats(items) == pytest.approx((1 / 12) ** 0.5 / 3**0.5)


def _pack(obj) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(obj))).decode()


def test_private_tests_decode_json_and_packed_strings_only():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    assert decode_tests(json.dumps(tests)) == decode_tests(_pack(json.dumps(tests)))
    assert decode_tests(_pack(json.dumps(tests)))[0].output == "2\n"
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        decode_tests(_pack(OrderedDict(a=1)))  # any class is refused: only plain data loads
    with pytest.raises(ValueError, match="other than a string"):
        decode_tests(_pack([1, 2]))


@pytest.mark.parametrize(
    "got,expected,ok",
    [
        ("3\n", "3", True),
        ("  1 2  \n3\n\n", "1 2\n3\n", True),  # whole output and each line stripped
        ("1 2\n\n3\n", "1 2\n3\n", False),  # inner blank lines count (official rule)
        ("0.3333333\n", "0.333333333", False),  # numbers are exact Decimals, no tolerance
        ("2.50\n", "2.5", True),
        ("1.5", "1.6", False),
        ("1000000000000000001", "1000000000000000000", False),
        ("1 2", "1\n2", False),
        ("yes", "Yes", False),
    ],
)
def test_stdout_compare(got, expected, ok):
    assert stdout_matches(got, expected) is ok


def test_code_extraction_and_prompt():
    resp = (
        "<think>```python\nbad()\n```</think>first\n```python\nx = 1\n```\nthen\n```py\ny = 2\n```"
    )
    assert extract_code(resp) == "y = 2\n"
    assert extract_code("<think>```python\nx=1\n```") is None  # unclosed reasoning: nothing
    assert extract_code("no fence") is None
    stdin = build_prompt({"question_content": "Q?", "starter_code": ""})
    functional = build_prompt({"question_content": "Q?", "starter_code": "class Solution:\n  pass"})
    for prompt in (stdin, functional):
        assert "### Question:\nQ?" in prompt and "### Format:" in prompt
        assert prompt.rstrip().endswith("### Answer: (use the provided format with backticks)")
    assert "standard input" in stdin and "class Solution" in functional
    assert func_name({"metadata": json.dumps({"func_name": "go"})}) == "go"
