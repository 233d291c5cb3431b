"""LiveCodeBench code generation: rows, prompts, code extraction and sandboxed test execution.

Each test runs in its own sandbox: the official header plus the solution, driven by lcb_child.py;
the verdict follows LiveCodeBench's grading rules (lcb_grading.py).

Rows follow the hub's columns (question_content, starter_code, public_test_cases, private_test_cases,
metadata, contest_date, ...). Private tests come either as JSON or as base64(zlib(pickle(str))) of JSON;
the pickle is read with an unpickler that refuses every class, so only plain strings come out.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pickle
import re
import signal
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path

from tqdm.auto import tqdm

from lm_eval_routed.evals.lcb_grading import (
    HEADER,
    INT_MAX_STR_DIGITS,
    ResultError,
    decode_result,
    parse_expected,
    show_value,
    stdout_mismatch,
    values_equal,
)
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

# The program that runs in the sandbox beside each solution (see lcb_child.py).
RUNNER = (Path(__file__).parent / "lcb_child.py").read_text()


class Status(str, Enum):
    """How one test ended."""

    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"
    TIMEOUT = "timeout"
    OUTPUT_LIMIT = "output_limit"
    RUNTIME_ERROR = "runtime_error"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class TestCase:
    """One test: input text, expected output text, and kind (``stdin`` or ``functional``)."""

    input: str
    output: str
    testtype: str


@dataclass(frozen=True)
class TestResult:
    """Outcome of one test, with how its process ended.

    ``exit_code`` is the process's exit status (None when a signal ended it); ``signal`` names the
    signal that ended it, if any (the sandbox reports a death by signal n as returncode -n, as
    Popen does, so an ``os._exit(139)`` stays an exit status). A timeout shows the harness's kill.
    """

    status: Status
    wall_s: float
    detail: str = ""
    exit_code: int | None = None
    signal: str | None = None


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
            "tests": [{**asdict(t), "status": t.status.value} for t in self.tests],
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


def _exit_of(returncode: int) -> tuple[int | None, str | None]:
    """(exit status, signal name) of a finished run; Popen gives -n for a death by signal n."""
    number = -returncode if returncode < 0 else 0
    try:
        name = signal.Signals(number).name if number else None
    except ValueError:
        name = None
    return (None if returncode < 0 else returncode), name


def _judge_call(stdout: str, expected_text: str) -> tuple[Status, str]:
    # The runner writes exactly one NUL-framed result; anything else on that descriptor (a
    # solution scribbling on inherited descriptors) voids it.
    if "\0" not in stdout:
        return Status.RUNTIME_ERROR, "the program exited before the function returned"
    if stdout.count("\0") != 2 or not (stdout.startswith("\0") and stdout.endswith("\0")):
        return Status.WRONG_ANSWER, "stray output on the result descriptor voids the result"
    try:
        got = decode_result(stdout[1:-1])
    except ResultError as err:
        return Status.WRONG_ANSWER, f"unreadable result: {err}"
    try:
        expected = parse_expected(expected_text)
    except (ValueError, RecursionError):
        return Status.WRONG_ANSWER, "the test's expected output is not JSON"
    try:
        ok = values_equal(got, expected)
    except Exception as err:  # the official grader counts this as a runtime error
        return Status.RUNTIME_ERROR, f"comparing the returned value raised {err!r}"[:300]
    if ok:
        return Status.PASSED, ""
    return Status.WRONG_ANSWER, f"returned {show_value(got)}, expected {show_value(expected)}"


def _run_test(code: str, test: TestCase, name: str | None, limits: Limits) -> TestResult:
    files = {"header.py": HEADER, "solution.py": code, "runner.py": RUNNER}
    argv = [program_python(), "-I", "-X", f"int_max_str_digits={INT_MAX_STR_DIGITS}"]
    argv += ["{work}/runner.py"]
    if test.testtype == "functional":
        if not name:
            return TestResult(
                Status.RUNTIME_ERROR, 0.0, "functional test but no func_name in metadata"
            )
        argv += ["call", "{work}/header.py", "{work}/solution.py", name]
    else:
        argv += ["stdin", "{work}/header.py", "{work}/solution.py"]
    res = run_sandboxed(files, argv, stdin=test.input, limits=limits)
    exit_code, signal_name = _exit_of(res.returncode)
    if res.timed_out or signal_name == "SIGXCPU":  # out of wall time, or of CPU seconds
        status, detail = Status.TIMEOUT, ""
    elif res.output_limit:
        status, detail = Status.OUTPUT_LIMIT, ""
    elif res.returncode != 0:
        status, detail = Status.RUNTIME_ERROR, res.stderr.strip()[-500:]
    elif test.testtype == "functional":
        status, detail = _judge_call(res.stdout, test.output)
    else:
        detail = stdout_mismatch(res.stdout, test.output)
        status = Status.WRONG_ANSWER if detail else Status.PASSED
    return TestResult(status, res.wall_s, detail, exit_code, signal_name)


def evaluate_code(
    row: dict, code: str | None, limits: Limits | None = None, stop_early: bool = True
) -> Verdict:
    """Run ``code`` against every test of ``row`` (public, then private); None means no code."""
    limits = limits or Limits()
    tests = all_tests(row)
    if code is None or not code.strip():
        skipped = tuple(TestResult(Status.SKIPPED, 0.0) for _ in tests)
        return Verdict(False, skipped, "no code found")
    if not tests:
        return Verdict(False, (), "the problem has no tests")
    name, results = func_name(row), []
    for test in tests:
        results.append(_run_test(code, test, name, limits))
        if stop_early and results[-1].status != Status.PASSED:
            results += [TestResult(Status.SKIPPED, 0.0)] * (len(tests) - len(results))
            break
    passed = all(r.status == Status.PASSED for r in results)
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


def contest_day(row: dict) -> date:
    """The day of the row's contest_date (ISO text, or a date the dataset already parsed); a
    ValueError naming the field when it is missing or does not parse."""
    value = row.get("contest_date")
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return datetime.fromisoformat(str(value).strip()).date()
    except ValueError:
        raise ValueError(
            f"field 'contest_date' is {value!r}, not an ISO date (YYYY-MM-DD, optionally with "
            "THH:MM:SS)"
        ) from None


def in_window(row: dict, start: str | date | None, end: str | date | None) -> bool:
    """Whether the row's contest_date (compared by day) lies in [start, end] (ISO days)."""
    day = contest_day(row)
    lo = date.fromisoformat(str(start)) if start else None
    hi = date.fromisoformat(str(end)) if end else None
    return (lo is None or day >= lo) and (hi is None or day <= hi)
