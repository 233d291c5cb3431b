"""A plain re-implementation of LiveCodeBench's grading rules, to check the harness against.

Written from the rules as the official grader states them, independently of the harness's code:

- the program is a fixed header (star imports of eighteen standard modules, plain imports of
  sixteen, recursion limit 50000) followed by the solution; Python's int/str digit limit is 50000;
- the program's module has no ``__file__``;
- stdin tests: the solution runs as a script; SystemExit ends it normally, any other exception
  fails the test; stdout and the expected text are each stripped, cut at newlines and each line
  stripped; the line counts must agree and each line must be equal as text, or else consist of
  tokens that all read as Decimal and compare equal as Decimal lists;
- functional tests: one JSON value per input line; ``Solution().<name>`` when the source mentions
  ``class Solution``, else the module's ``<name>``; a returned tuple (top level only) becomes a
  list; the test passes when ``returned == expected`` is truthy; an exception anywhere fails it.

Besides, as the harness does deliberately (see tasks/README.md): every test runs in a fresh
process, and blank input lines of a functional test are skipped. Programs run unsandboxed in a
subprocess, so only the suite's own programs may go through here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

_STARRED = [
    "string",
    "re",
    "datetime",
    "collections",
    "heapq",
    "bisect",
    "copy",
    "math",
    "random",
    "statistics",
    "itertools",
    "functools",
    "operator",
    "io",
    "sys",
    "json",
    "builtins",
    "typing",
]
_PLAIN = [m for m in _STARRED if m not in {"builtins", "typing"}]
PREAMBLE = "\n".join(
    [f"from {m} import *" for m in _STARRED]
    + [f"import {m}" for m in _PLAIN]
    + ["sys.setrecursionlimit(50000)", ""]
)

# Runs a stdin program: SystemExit is a normal end.
_STDIN_DRIVER = """
import sys
path = sys.argv[1]
scope = {"__name__": "__main__"}
try:
    exec(compile(open(path).read(), path, "exec"), scope)
except SystemExit:
    pass
"""

# Runs one functional test and prints PASS or FAIL; the comparison happens here, on the real value.
_CALL_DRIVER = """
import json, sys, types
path, name, case = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
source = open(path).read()
module = types.ModuleType("reference_solution")
exec(compile(source, path, "exec"), module.__dict__)
owner = module.Solution() if "class Solution" in source else module
args = []
for line in case["input"].split("\\n"):
    if line.strip():
        args.append(json.loads(line))
returned = getattr(owner, name)(*args)
if isinstance(returned, tuple):
    returned = list(returned)
expected = json.loads(case["output"])
try:
    verdict = "PASS" if (returned == expected) else "FAIL"
except Exception:
    verdict = "FAIL"
sys.__stdout__.write("\\n" + verdict + "\\n")
"""


def _lines(text: str) -> list[str]:
    return [piece.strip() for piece in text.strip().split("\n")]


def _as_numbers(line: str) -> list[Decimal] | None:
    numbers = []
    for token in line.split():
        try:
            numbers.append(Decimal(token))
        except Exception:
            return None
    return numbers


def line_ok(got: str, want: str) -> bool:
    """One stripped line under the reference rule."""
    if got == want:
        return True
    a, b = _as_numbers(got), _as_numbers(want)
    if a is None or b is None:
        return False
    try:
        return a == b
    except Exception:
        return False


def stdout_ok(got: str, want: str) -> bool:
    """A whole stdout under the reference rule."""
    got_lines, want_lines = _lines(got), _lines(want)
    if len(got_lines) != len(want_lines):
        return False
    return all(line_ok(g, w) for g, w in zip(got_lines, want_lines))


def equal(returned, expected_json: str) -> bool:
    """The reference functional comparison on a real returned value."""
    if isinstance(returned, tuple):
        returned = list(returned)
    try:
        return bool(returned == json.loads(expected_json))
    except Exception:
        return False


def _python(*args: str, stdin: str, timeout: float) -> subprocess.CompletedProcess | None:
    cmd = [sys.executable, "-I", "-X", "int_max_str_digits=50000", *args]
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def passes(
    code: str, kind: str, tests: list[tuple[str, str]], name: str = "f", timeout: float = 2.0
) -> bool:
    """Whether ``code`` passes every test under the reference rules (first failure stops)."""
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "program.py"
        program.write_text(PREAMBLE + code)
        for stdin, want in tests:
            if kind == "stdin":
                done = _python("-c", _STDIN_DRIVER, str(program), stdin=stdin, timeout=timeout)
                ok = done is not None and done.returncode == 0 and stdout_ok(done.stdout, want)
            else:
                case = Path(tmp) / "case.json"
                case.write_text(json.dumps({"input": stdin, "output": want}))
                args = ("-c", _CALL_DRIVER, str(program), name, str(case))
                done = _python(*args, stdin="", timeout=timeout)
                ok = done is not None and done.returncode == 0 and done.stdout.endswith("\nPASS\n")
            if not ok:
                return False
    return True
