"""LiveCodeBench code generation: rows, prompts, code extraction and sandboxed test execution.

Rows follow the hub's columns (question_content, starter_code, public_test_cases, private_test_cases,
metadata, contest_date, ...). Private tests come either as JSON or as base64(zlib(pickle(str))) of JSON;
the pickle is read with an unpickler that refuses every class, so only plain strings come out.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import pickle
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from lm_eval_routed.evals.sandbox import Limits, isolation, program_python, run_sandboxed
from lm_eval_routed.evals.scoring import strip_reasoning

logger = logging.getLogger(__name__)

SYSTEM = (
    "You are an expert Python programmer. Given a programming problem, write a correct Python "
    "program that meets the specification and passes all tests."
)
FORMAT_STARTER = (
    "### Format: Complete the starter code below into a full solution and put all of your code "
    "inside one fenced block.\n```python\n{starter}\n```\n\n"
)
FORMAT_STDIN = (
    "### Format: Read the input from standard input, solve the problem and write the answer to "
    "standard output (do not hard-code the sample inputs). Put all of your code inside one fenced "
    "block, as follows.\n```python\n# YOUR CODE HERE\n```\n\n"
)
ANSWER = "### Answer: (use the provided format with backticks)\n\n"

# Names competitive solutions use without importing them (LeetCode's environment provides them).
HEADER = (
    "import sys, os, math, re, bisect, heapq, itertools, functools, collections, string, random\n"
    "from typing import *\n"
    "from collections import *\n"
    "from functools import lru_cache, reduce, cache\n"
    "from itertools import accumulate, permutations, combinations, product\n"
    "from heapq import heappush, heappop, heapify\n"
    "from bisect import bisect_left, bisect_right, insort\n"
    "from math import inf, gcd, sqrt, ceil, floor, log, comb\n"
    "sys.setrecursionlimit(100000)\n"
)

# Runs inside the sandbox for functional tests: call the function, report only its JSON result.
RUNNER = """\
import json, os, sys
out = os.dup(1)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # prints of the solution must not mix with the result
args = [json.loads(line) for line in sys.stdin.read().split("\\n") if line.strip()]
ns = {"__name__": "solution"}
with open("solution.py") as f:
    exec(compile(f.read(), "solution.py", "exec"), ns)
name = sys.argv[1]
fn = getattr(ns["Solution"](), name) if "Solution" in ns else ns[name]
result = fn(*args)
def plain(x):
    if isinstance(x, (tuple, list)):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    return x
os.write(out, b"\\0" + json.dumps(plain(result)).encode() + b"\\0")
"""


@dataclass(frozen=True)
class TestCase:
    """One test: input text, expected output text, and kind (``stdin`` or ``functional``)."""

    input: str
    output: str
    testtype: str


@dataclass(frozen=True)
class TestResult:
    """Outcome of one test: ``passed``, ``wrong_answer``, ``timeout``, ``output_limit``,
    ``runtime_error``, ``skipped``."""

    status: str
    wall_s: float
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    """All tests of one solution; ``passed`` only if every test passed; ``isolation``: the sandbox's."""

    passed: bool
    tests: tuple[TestResult, ...]
    error: str = ""
    isolation: str = ""

    def to_dict(self) -> dict:
        """JSON-ready form (the exec-check output and what lm-eval logs per sample)."""
        return {
            "passed": self.passed,
            "error": self.error,
            "isolation": self.isolation,
            "tests": [asdict(t) for t in self.tests],
        }


class _StrOnly(pickle.Unpickler):
    def find_class(self, module, name):  # every class is refused: only primitives can load
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a test blob")


def decode_tests(raw) -> list[TestCase]:
    """Test cases from a JSON list, or from base64+zlib+pickle of such a JSON string."""
    if isinstance(raw, list):
        items = raw
    elif not raw:
        items = []
    else:
        try:
            items = json.loads(raw)
        except ValueError:
            blob = _StrOnly(io.BytesIO(zlib.decompress(base64.b64decode(raw)))).load()
            if not isinstance(blob, str):
                raise ValueError(
                    "private tests: the pickle held something other than a string"
                ) from None
            items = json.loads(blob)
    return [TestCase(str(t["input"]), str(t["output"]), t.get("testtype", "stdin")) for t in items]


def func_name(row: dict) -> str | None:
    """The function to call for functional tests (from the row's metadata JSON), if any."""
    meta = row.get("metadata") or "{}"
    meta = json.loads(meta) if isinstance(meta, str) else meta
    return meta.get("func_name")


def all_tests(row: dict) -> list[TestCase]:
    """Public then private tests of a row."""
    return decode_tests(row.get("public_test_cases")) + decode_tests(row.get("private_test_cases"))


def build_prompt(row: dict) -> str:
    """The LiveCodeBench-style prompt: question, format (starter code or stdin), answer header."""
    starter = (row.get("starter_code") or "").strip()
    fmt = FORMAT_STARTER.format(starter=starter) if starter else FORMAT_STDIN
    question = row["question_content"].strip()
    return f"{SYSTEM}\n\n### Question:\n{question}\n\n{fmt}{ANSWER}"


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str | None:
    """The last fenced code block of the answer part (reasoning stripped), or None."""
    body = strip_reasoning(response)
    if body is None:
        return None
    blocks = _FENCE.findall(body)
    return blocks[-1][1] if blocks else None


def _numbers_close(a: str, b: str) -> bool:
    if re.fullmatch(r"[-+]?\d+", a) and re.fullmatch(r"[-+]?\d+", b):
        return int(a) == int(b)  # integers are exact: a float tolerance would merge big ids
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6)
    except ValueError:
        return False


def stdout_matches(got: str, expected: str) -> bool:
    """Line-wise, whitespace-insensitive compare; numeric tokens within 1e-6 (abs or rel)."""
    got_lines = [ln.split() for ln in got.strip().splitlines()]
    exp_lines = [ln.split() for ln in expected.strip().splitlines()]
    got_lines = [ln for ln in got_lines if ln]  # blank lines carry no answer
    exp_lines = [ln for ln in exp_lines if ln]
    if len(got_lines) != len(exp_lines):
        return False
    for g_line, e_line in zip(got_lines, exp_lines):
        if len(g_line) != len(e_line):
            return False
        if any(g != e and not _numbers_close(g, e) for g, e in zip(g_line, e_line)):
            return False
    return True


def _values_match(got, expected) -> bool:
    if isinstance(got, float) or isinstance(expected, float):
        try:
            return math.isclose(float(got), float(expected), rel_tol=1e-6, abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_values_match, got, expected))
    return got == expected


def _framed_result_matches(stdout: str, expected: str) -> bool:
    # The runner writes exactly one NUL-framed result; anything else on that fd (a solution
    # scribbling on inherited descriptors) voids it.
    if stdout.count("\0") != 2 or not (stdout.startswith("\0") and stdout.endswith("\0")):
        return False
    try:
        return _values_match(json.loads(stdout[1:-1]), json.loads(expected))
    except ValueError:
        return False


def _run_test(code: str, test: TestCase, name: str | None, limits: Limits) -> TestResult:
    if test.testtype == "functional":
        if not name:
            return TestResult("runtime_error", 0.0, "functional test but no func_name in metadata")
        files = {"solution.py": HEADER + code, "runner.py": RUNNER}
        argv = [program_python(), "-I", "{work}/runner.py", name]
    else:
        files = {"solution.py": HEADER + code}
        argv = [program_python(), "-I", "{work}/solution.py"]
    res = run_sandboxed(files, argv, stdin=test.input, limits=limits)
    if res.timed_out:
        return TestResult("timeout", res.wall_s)
    if res.output_limit:
        return TestResult("output_limit", res.wall_s)
    if res.returncode != 0:
        return TestResult("runtime_error", res.wall_s, res.stderr.strip()[-300:])
    if test.testtype == "functional":
        ok = _framed_result_matches(res.stdout, test.output)
    else:
        ok = stdout_matches(res.stdout, test.output)
    return TestResult("passed" if ok else "wrong_answer", res.wall_s)


def evaluate_code(
    row: dict, code: str | None, limits: Limits | None = None, stop_early: bool = True
) -> Verdict:
    """Run ``code`` against every test of ``row`` (public, then private); None means no code."""
    limits = limits or Limits()
    tests = all_tests(row)
    if code is None or not code.strip():
        return Verdict(False, tuple(TestResult("skipped", 0.0) for _ in tests), "no code found")
    if not tests:
        return Verdict(False, (), "the problem has no tests")
    name, results = func_name(row), []
    for test in tests:
        results.append(_run_test(code, test, name, limits))
        if stop_early and results[-1].status != "passed":
            results += [TestResult("skipped", 0.0)] * (len(tests) - len(results))
            break
    passed = all(r.status == "passed" for r in results)
    return Verdict(passed, tuple(results), isolation=isolation().label)


def default_workers() -> int:
    """Parallel sandboxes: one per core, leaving one for the harness, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def evaluate_many(
    jobs: list[tuple[dict, str | None]], workers: int | None = None, limits: Limits | None = None
) -> list[Verdict]:
    """Evaluate (row, response) pairs in a bounded thread pool (each test runs in its own sandbox)."""
    isolation()  # probe once, so a kernel without namespaces is logged before the work starts
    workers = workers or default_workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(evaluate_code, row, _code_of(resp), limits) for row, resp in jobs]
        return [
            f.result() for f in tqdm(futures, desc="livecodebench tests", disable=len(jobs) < 2)
        ]


def _code_of(response: str | None) -> str | None:
    return None if response is None else extract_code(response)


def load_problem_file(path: str) -> dict:
    """One LiveCodeBench row from a JSON file, checked for the fields tests need."""
    with open(path) as f:
        row = json.load(f)
    if not isinstance(row, dict) or "public_test_cases" not in row:
        raise ValueError(
            f"{path}: expected one LiveCodeBench row (an object with public_test_cases)"
        )
    return row


def in_window(row: dict, start: str | None, end: str | None) -> bool:
    """Whether the row's contest_date (ISO text, compared by day) lies in [start, end]."""
    day = str(row.get("contest_date") or "")[:10]
    return (not start or day >= start) and (not end or day <= end)
