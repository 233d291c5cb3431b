"""Programs graded by the harness (sandboxed), by lcb_reference.py and by the official grader agree.

Each program carries the verdict LiveCodeBench's own grader (lcb_runner/evaluation/testing_util.py,
run_test) gives it; the harness and the reference re-implementation must both give the same. The
deliberate differences from the official grader (tasks/README.md) are pinned at the end, each with
the official verdict beside ours.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lcb_reference as ref
import pytest
from helpers import missing, require

from lm_eval_routed.evals.lcb_grading import HEADER, decode_result, parse_expected, values_equal
from lm_eval_routed.evals.livecodebench import RUNNER, evaluate_code, evaluate_many
from lm_eval_routed.evals.sandbox import Limits, program_python, run_sandboxed

LIMITS = Limits(wall_s=2.0, memory_mb=1024)


@dataclass(frozen=True)
class Program:
    """A solution, its tests (input, expected output) and the official grader's verdict on it."""

    name: str
    code: str
    tests: tuple[tuple[str, str], ...]
    official: bool
    kind: str = "stdin"

    def row(self) -> dict:
        tests = [{"input": i, "output": o, "testtype": self.kind} for i, o in self.tests]
        meta = {"func_name": "f"} if self.kind == "functional" else {}
        return {"question_content": "q", "public_test_cases": json.dumps(tests),
                "metadata": json.dumps(meta)}  # fmt: skip


def stdin(name: str, code: str, official: bool, tests=None) -> Program:
    """A stdin program; by default one test summing the pairs of two lines."""
    return Program(name, code, tuple(tests or [("1 2\n3 4\n", "3\n7\n")]), official)


def printing(name: str, out: str, want: str, official: bool) -> Program:
    """A stdin program that writes ``out`` verbatim, against one test expecting ``want``."""
    return stdin(name, f"import sys\nsys.stdout.write({out!r})\n", official, [("\n", want)])


def call(name: str, body: str, want: str, official: bool, prelude: str = "") -> Program:
    """A functional program whose ``Solution().f(a, b)`` returns ``body``; input a=1, b=4."""
    code = f"{prelude}class Solution:\n    def f(self, a, b):\n        return {body}\n"
    return Program(name, code, (("1\n4", want),), official, kind="functional")


def bare(name: str, code: str, official: bool, tests=(("1\n4", "5"),)) -> Program:
    """A functional program given whole."""
    return Program(name, code, tuple(tests), official, kind="functional")


SUM = "for _ in range(2):\n    a, b = map(int, input().split())\n    print(a + b)\n"
RECURSE = "def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nprint(f({}))\n"
GUARDED = "def main():\n    print(3)\n    print(7)\nif __name__ == '__main__':\n    main()\n"

# fmt: off
PROGRAMS = [
    # stdin: correct, wrong, crashing, slow, exits
    stdin("sum", SUM, True, [("1 2\n3 4\n", "3\n7\n"), ("5 6\n7 8\n", "11\n15\n")]),
    stdin("sum_wrong", SUM.replace("a + b", "a - b"), False),
    stdin("crash_after_output", SUM + "raise ValueError\n", False),
    stdin("infinite_loop", "while True:\n    pass\n", False),
    stdin("sys_exit_1_after_output", SUM + "import sys\nsys.exit(1)\n", True),
    stdin("exit_after_output", SUM + "exit()\n", True),
    stdin("sys_exit_text", SUM + "sys.exit('done')\n", True),
    stdin("main_guard_last", GUARDED, True),
    stdin("stderr_only", "print(3, file=sys.stderr)\nprint(7, file=sys.stderr)\n", False),
    # stdin: the environment (official header)
    stdin("header_names", "print(list(pairwise([3, 7]))[0][0])\nprint(cmp_to_key and 7)\n", True),
    stdin("copy_is_the_module", "print(copy(3))\nprint(7)\n", False),
    stdin("os_not_imported", "print(os.sep)\n", False, [("\n", "/\n")]),
    stdin("recursion_40000", RECURSE.format(40000), True, [("\n", "40000\n")]),
    stdin("recursion_60000", RECURSE.format(60000), False, [("\n", "60000\n")]),
    stdin("huge_int", "print(10 ** 5000)\n", True, [("\n", "1" + "0" * 5000 + "\n")]),
    stdin("future_import", "from __future__ import annotations\nprint(3)\nprint(7)\n", False),
    stdin("no_dunder_file", "print(3 if __file__ else 0)\nprint(7)\n", False),
    # stdin: comparison borderlines
    printing("sci_vs_near_int", "1e+18\n", "999999999999999999\n", False),
    printing("sci_vs_equal_int", "1e+18\n", "1000000000000000000\n", True),
    printing("float_within_1e-6", "0.3333333\n", "0.333333333\n", False),
    printing("trailing_zero", "1.50\n", "1.5\n", True),
    printing("signalling_nan", "sNaN 1\n", "sNaN 2\n", False),
    printing("inner_blank_line_extra", "1\n\n2\n", "1\n2\n", False),
    printing("inner_blank_line_both", "1\n\n2\n", "1\n\n2\n", True),
    printing("outer_blank_lines", "\n\n1\n2\n\n\n", "1\n2\n", True),
    printing("trailing_spaces", "1 2   \n", "1 2\n", True),
    printing("double_space_words", "a  b\n", "a b\n", False),
    printing("crlf", "1\r\n2\r\n", "1\n2\n", True),
    printing("empty_vs_zero", "", "0\n", False),
    # functional: correct, wrong, crashing, slow, exits
    bare("add", "class Solution:\n    def f(self, a, b):\n        return a + b\n", True,
         [("1\n2", "3"), ("3\n4", "7")]),
    call("add_wrong", "a - b", "5", False),
    call("raises", "[][a]", "5", False),
    call("slow", "next(x for x in itertools.count() if x < 0)", "5", False),
    call("sys_exit_in_call", "sys.exit(0)", "5", False),
    call("prints_and_returns", "print('noise') or a + b", "5", True),
    bare("bare_function", "def f(a, b):\n    return a + b\n", True),
    bare("class_in_comment", "# class Solution\ndef f(a, b):\n    return a + b\n", False),
    bare("missing_method", "class Solution:\n    def g(self, a, b):\n        return 5\n", False),
    # functional: comparison borderlines
    call("top_tuple", "(a, b)", "[1, 4]", True),
    call("nested_tuple", "[(a, b)]", "[[1, 4]]", False),
    call("float_close", "a / 3", "0.3333333", False),
    call("float_for_int", "5.0", "5", True),
    call("fraction", "Fraction(10, 2)", "5", True, prelude="from fractions import Fraction\n"),
    call("set", "{a, b}", "[1, 4]", False),
    call("int_keys", "{a: b}", '{"1": 4}', False),
    call("counter", "Counter('ab')", '{"a": 1, "b": 1}', True),
    call("namedtuple", "P(a, b)", "[1, 4]", True,
         prelude="from collections import namedtuple\nP = namedtuple('P', 'x y')\n"),
    call("nan", "float('nan')", "NaN", False),
    call("huge_int_result", "10 ** 5000", "1" + "0" * 5000, True),
]
# fmt: on


def _reference(programs: list[Program]) -> list[bool]:
    with ThreadPoolExecutor(max_workers=2) as pool:  # the runs mostly wait on subprocesses
        return list(pool.map(lambda p: ref.passes(p.code, p.kind, list(p.tests)), programs))


def _ours(programs: list[Program]) -> list[bool]:
    jobs = [(p.row(), f"```python\n{p.code}```") for p in programs]
    return [v.passed for v in evaluate_many(jobs, workers=2, limits=LIMITS)]


def test_the_set_is_varied():
    assert len({p.name for p in PROGRAMS}) == len(PROGRAMS) >= 45
    assert {p.official for p in PROGRAMS} == {True, False}
    assert {p.kind for p in PROGRAMS} == {"stdin", "functional"}


@pytest.mark.slow
def test_harness_reference_and_official_agree_on_every_program():
    table = zip((p.name for p in PROGRAMS), _ours(PROGRAMS), _reference(PROGRAMS), PROGRAMS)
    disagree = [(n, o, r, p.official) for n, o, r, p in table if not o == r == p.official]
    assert not disagree, f"(name, harness, reference, official): {disagree}"


# ------------------------------------------------------------------- numpy results

NUMPY = "import numpy as np\n"
# fmt: off
NUMPY_CASES = [  # official verdicts under numpy >= 2 comparison rules
    call("np_int64", "np.int64(a + b)", "5", True, NUMPY),
    call("np_float32", "np.float32(0.1)", "0.1", True, NUMPY),
    call("np_bool", "np.bool_(True)", "true", True, NUMPY),
    call("np_int64_list", "[np.int64(a), np.int64(b)]", "[1, 4]", True, NUMPY),
    call("np_array_of_one", "np.array([5])", "5", True, NUMPY),
    call("np_array_of_one_list", "np.array([5])", "[5]", True, NUMPY),
    call("np_array_of_two", "np.array([a, b])", "[1, 4]", False, NUMPY),  # truth value raises
    call("np_int64_wrong", "np.int64(4)", "5", False, NUMPY),
]
# fmt: on


@pytest.mark.slow
def test_numpy_results_compare_as_the_official_grader_does(tmp_path):
    """The runner and the rebuild in the harness, on an interpreter that has numpy.

    These are the suite's own programs, run outside the sandbox, whose interpreter may lack numpy.
    """
    require("numpy")
    (tmp_path / "runner.py").write_text(RUNNER)
    (tmp_path / "header.py").write_text(HEADER)
    for program, reference in zip(NUMPY_CASES, _reference(NUMPY_CASES)):
        (tmp_path / "solution.py").write_text(program.code)
        argv = [sys.executable, "-I", "runner.py", "call", "header.py", "solution.py", "f"]
        done = subprocess.run(argv, input="1\n4", cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        got, want = decode_result(done.stdout.strip("\0")), parse_expected(program.tests[0][1])
        try:
            ours = values_equal(got, want)
        except ValueError:  # a runtime error, as officially
            ours = False
        assert ours is reference is program.official, program.name


def test_numpy_in_the_sandbox():
    res = run_sandboxed({}, [program_python(), "-c", "import numpy"], limits=LIMITS)
    if not res.ok:
        missing(f"the sandbox's interpreter {program_python()} has no numpy: {res}")
    program = NUMPY_CASES[0]
    assert evaluate_code(program.row(), program.code, limits=LIMITS).passed


# ------------------------------------------------------------------- deliberate differences

PER_LINE = "    print(sum(map(int, line.split())))\n"
STATEFUL = (
    "class Solution:\n    calls = 0\n    def f(self, a, b):\n        Solution.calls += 1\n"
    "        return a + b + Solution.calls - 1\n"
)
TOP_GLOBAL = (
    "total = 0\ndef add(x):\n    global total\n    total += x\n"
    "for line in sys.stdin.read().splitlines():\n    total = 0\n"
    "    for x in line.split():\n        add(int(x))\n    print(total)\n"
)
# fmt: off
DIFFERENCES = [  # each documented in tasks/README.md: the official verdict, and ours after it
    (stdin("for_line_in_stdin", "for line in sys.stdin:\n" + PER_LINE, False), True),
    (stdin("open_0", "for line in open(0):\n" + PER_LINE, False), True),
    (stdin("stdout_buffer", "sys.stdout.buffer.write(b'3\\n7\\n')\n", False), True),
    (stdin("stdin_buffer_readline", "input = sys.stdin.buffer.readline\n" + SUM, False), True),
    (stdin("read_fd_0", "import os\nfor line in os.read(0, 99).splitlines():\n" + PER_LINE,
           False), True),
    (stdin("main_guard_not_last", GUARDED + "DONE = True\n", False), True),
    (stdin("main_guard_reversed", GUARDED.replace("__name__ == '__main__'",
                                                  "'__main__' == __name__"), False), True),
    (stdin("global_of_a_top_level_name", TOP_GLOBAL, False), True),
    (stdin("quit", "print(3)\nprint(7)\nquit()\n", False), True),
    (stdin("os_exit_after_flush", "import os\nprint(3)\nprint(7, flush=True)\nos._exit(0)\n",
           False), True),
    (stdin("import_resource", "import resource\nprint(3)\nprint(7)\n", False), True),
    (stdin("read_stdin_twice", "sys.stdin.read()\nprint(len(sys.stdin.read()))\n", True,
           [("1\n", "2\n")]), False),
    (bare("state_across_tests", STATEFUL, False, [("1\n4", "5"), ("1\n4", "5")]), True),
    (call("custom_eq", "type('A', (), {'__eq__': lambda s, o: True})()", "5", True), False),
    (bare("blank_input_line", "def f(a, b):\n    return a + b\n", False, [("1\n4\n", "5")]),
     True),
]
# fmt: on


@pytest.mark.slow
def test_deliberate_differences_are_pinned():
    programs = [p for p, _ in DIFFERENCES]
    got = dict(zip((p.name for p in programs), _ours(programs)))
    assert got == {p.name: ours for p, ours in DIFFERENCES}
    assert all(ours != p.official for p, ours in DIFFERENCES)  # each is a real difference
