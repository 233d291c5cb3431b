"""LiveCodeBench's grading rules, checked without running programs, and the verdict's detail.

The comparisons are checked against lcb_reference.py (a plain re-implementation of the official
rules) on every pair drawn from a set of awkward outputs and returned values.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections import Counter, OrderedDict, defaultdict, deque, namedtuple
from decimal import Decimal
from fractions import Fraction

import lcb_reference as ref
import pytest
from helpers import require

from lm_eval_routed.evals import lcb_child
from lm_eval_routed.evals.lcb_grading import (
    HEADER,
    STAR_MODULES,
    ResultError,
    decode_result,
    parse_expected,
    stdout_matches,
    stdout_mismatch,
    values_equal,
)
from lm_eval_routed.evals.livecodebench import Status, evaluate_code
from lm_eval_routed.evals.sandbox import Limits
from lm_eval_routed.evals.scoring import PASS_KS, pass_at_k

# fmt: off
OUTPUTS = ["", "0", "1", "1\n", "1 2", "1  2", "1\n\n2", "1\n2", " 1 \n 2 \n\n", "1.0", "1e0", "-0",
           "+1", "1_0", "10", "NaN", "nan", "Infinity", "inf", "sNaN", "a b", "a\tb", "1\r\n2\r\n",
           "1\r2", "0x10", "16", "1e+18", "999999999999999999", "1000000000000000000", "\u0661",
           "1\n\x0c\n2", "yes", "Yes", "True"]
# fmt: on


def test_stdout_rule_matches_the_reference_on_every_pair():
    for got, want in itertools.product(OUTPUTS, repeat=2):
        assert stdout_matches(got, want) is ref.stdout_ok(got, want), (got, want)


@pytest.mark.parametrize(
    "got,expected,ok",
    [
        ("1e+18\n", "999999999999999999\n", False),  # exact as Decimal: no tolerance
        ("1e+18\n", "1000000000000000000\n", True),
        ("0.3333333\n", "0.333333333\n", False),
        ("1\n\n2\n", "1\n2\n", False),  # inner blank lines count
        ("\n\n1\n2  \n\n", "1\n2", True),  # outer blank lines and line ends do not
        ("1  2\n", "1 2\n", True),  # numbers compare token by token
        ("a  b\n", "a b\n", False),  # text compares whole
    ],
)
def test_stdout_rule_cases(got, expected, ok):
    assert stdout_matches(got, expected) is ok


def test_stdout_mismatch_says_where():
    assert stdout_mismatch("1\n3\n", "1\n2\n") == "line 2: got '3', expected '2'"
    assert stdout_mismatch("1\n", "1\n2\n") == "1 output lines, expected 2"
    assert stdout_mismatch("1 \n", "1") == ""


def _returned_values() -> list:
    point = namedtuple("point", "x y")
    # fmt: off
    values = [None, True, False, 0, 1, 5, -7, 2**70, 10**5000, 0.25, 5.0, 1 / 3, float("nan"),
              float("inf"), complex(5, 0), "ab", "", [], [1, 4], [[1, 4]], [(1, 4)], (1, 4),
              ((1, 4),), point(1, 4), {"a": 1}, {1: 4}, {"x": (1, 2)}, {"x": [1, 2]},
              Counter("ab"), OrderedDict(a=1), defaultdict(int, a=1), {1, 4}, frozenset(),
              deque([1, 4]), b"ab", Fraction(10, 2), Fraction(1, 4), Decimal("0.25"),
              Decimal("5"), type("I", (int,), {})(5), type("S", (str,), {})("ab"), range(2)]
    # fmt: on
    try:
        import numpy as np
    except ImportError:
        return values
    # fmt: off
    return values + [np.int64(5), np.float32(0.1), np.float64(0.25), np.bool_(True),
                     np.array([5]), np.array([1, 4]), np.array([[1, 4]]), np.array(5),
                     [np.int64(1), np.int64(4)], np.str_("ab"), np.array(["a", "b"])]
    # fmt: on


# fmt: off
EXPECTED = ["null", "true", "1", "5", "0", "-7", str(2**70), "1" + "0" * 5000, "0.25", "0.1", "5.0",
            "NaN", "Infinity", '"ab"', '""', "[]", "[1, 4]", "[[1, 4]]", "[5]", '["a", "b"]',
            '{"a": 1}', '{"1": 4}', '{"x": [1, 2]}', '{"a": 1, "b": 1}']
# fmt: on


def _ours(value, expected: str) -> bool:
    """Encode in the runner's way, rebuild in the harness's, compare by the official rule."""
    try:
        rebuilt = decode_result(json.dumps(lcb_child.encode(value)))
        return values_equal(rebuilt, parse_expected(expected))
    except Exception:  # a comparison that raises fails the test (a runtime error)
        return False


def test_returned_values_compare_as_the_reference_does():
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # the reference parses a 5000-digit expected value
    try:
        for value, expected in itertools.product(_returned_values(), EXPECTED):
            assert _ours(value, expected) is ref.equal(value, expected), (value, expected)
    finally:
        sys.set_int_max_str_digits(limit)


def test_expected_values_of_any_length_parse():
    assert parse_expected("[" + "1" + "0" * 6000 + "]") == [10**6000]  # past Python's digit limit


def test_malformed_results_are_refused():
    for text in ['{"zz": 1}', '{"t": [1], "d": []}', '{"d": [[[1], 2]]}', '{"i": "xyz"}', "[1",
                 '{"a": ["<i8", [3], [1, 2]]}', '{"a": ["<i8", [-1], []]}', "[" * 100_000]:  # fmt: skip
        with pytest.raises(ResultError):
            decode_result(text)


def test_results_cannot_make_the_harness_allocate():
    require("numpy")
    huge = decode_result('{"a": ["V1000000000", [1], [0]]}')  # a gigabyte per item
    assert repr(huge).startswith("<numpy.ndarray V1000000000") and huge != [0]
    assert decode_result('{"n": ["V1000000000", 0]}') != 0


def test_header_gives_the_official_namespace():
    names: dict = {}
    exec(HEADER.replace("sys.setrecursionlimit(50000)\n", ""), names)  # the harness keeps its limit
    import builtins
    import copy
    import typing

    assert (
        names["pairwise"] is itertools.pairwise and names["copy"] is copy
    )  # rebound to the module
    assert names["open"] is builtins.open and names["pow"] is builtins.pow  # builtins come late
    assert names["Counter"] is typing.Counter and "os" not in names
    assert HEADER.endswith("sys.setrecursionlimit(50000)\n") and HEADER == ref.PREAMBLE
    assert STAR_MODULES[-2:] == ("builtins", "typing")


# ------------------------------------------------------------------- verdict detail

LIMITS = Limits(wall_s=1.5)


def test_exec_check_says_how_each_test_ended(tmp_path, capsys):
    from lm_eval_routed.cli import main

    tests = [{"input": "2\n", "output": "4\n", "testtype": "stdin"}] * 2
    row = {"question_content": "q", "public_test_cases": json.dumps(tests), "metadata": "{}"}
    (tmp_path / "p.json").write_text(json.dumps(row))
    codes = {
        "crash": "n = int(input())\nprint({}[n])\n",
        "segfault": "import ctypes\nctypes.string_at(0)\n",
        "slow": "while True:\n    pass\n",
        "exit_1": "print(2 * int(input()))\nsys.exit(1)\n",
    }
    seen = {}
    for name, code in codes.items():
        (tmp_path / f"{name}.py").write_text(code)
        args = [str(tmp_path / "p.json"), str(tmp_path / f"{name}.py"), "--timeout", "1.5"]
        status = main(["exec-check", *args, "--stop-early"])
        seen[name] = (status, json.loads(capsys.readouterr().out)["tests"])
    status, tests = seen["crash"]
    assert status == 1 and tests[0]["status"] == "runtime_error" and tests[0]["exit_code"] == 1
    assert 'solution.py", line 2' in tests[0]["detail"] and "KeyError: 2" in tests[0]["detail"]
    assert tests[1]["status"] == "skipped"
    _, tests = seen["segfault"]
    assert tests[0]["status"] == "runtime_error" and tests[0]["signal"] == "SIGSEGV"
    _, tests = seen["slow"]
    assert tests[0]["status"] == "timeout" and tests[0]["signal"] == "SIGKILL"
    status, tests = seen["exit_1"]  # SystemExit ends the program; its output is judged
    assert status == 0 and [t["status"] for t in tests] == ["passed", "passed"]
    assert tests[0]["exit_code"] == 0 and tests[0]["signal"] is None


def _functional(body: str, expected: str) -> dict:
    code = f"class Solution:\n    def f(self, a, b):\n        return {body}\n"
    row = {
        "question_content": "q",
        "public_test_cases": json.dumps(
            [{"input": "1\n4", "output": expected, "testtype": "functional"}]
        ),
        "metadata": json.dumps({"func_name": "f"}),
    }
    return evaluate_code(row, code, limits=LIMITS).to_dict()["tests"][0]


def test_functional_verdicts_show_the_returned_value():
    test = _functional("[(a, b)]", "[[1, 4]]")
    assert test["status"] == Status.WRONG_ANSWER == "wrong_answer"
    assert test["detail"] == "returned [(1, 4)], expected [[1, 4]]"
    test = _functional("{a} and sys.exit(0)", "5")
    assert test["status"] == "runtime_error" and "exited before" in test["detail"]


# ------------------------------------------------------------------- pass@k


def _official_estimator(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) as the running product LiveCodeBench evaluates."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / m for m in range(n - c + 1, n + 1))


def test_pass_at_k_matches_the_official_estimator():
    for n in range(1, 65):
        for c, k in itertools.product(range(n + 1), [k for k in PASS_KS if k <= n]):
            assert pass_at_k(n, c, k) == pytest.approx(_official_estimator(n, c, k), abs=1e-12)
