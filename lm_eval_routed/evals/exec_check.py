"""``lm-eval-routed exec-check``: run one solution against one LiveCodeBench problem in the sandbox."""

from __future__ import annotations

import argparse
import json
import sys

from lm_eval_routed.evals.livecodebench import evaluate_code, extract_code, load_problem_file
from lm_eval_routed.evals.sandbox import Limits, SandboxUnavailable


def exec_check_main(argv: list[str]) -> int:
    """``lm-eval-routed exec-check PROBLEM.json CODE.py``: print a JSON verdict.

    Per test: its status, wall time, detail (traceback tail, or where the answer differs), exit
    code and the signal that ended it, if any.
    """
    parser = argparse.ArgumentParser(
        prog="lm-eval-routed exec-check", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "problem", help="one LiveCodeBench row as JSON (public/private tests, metadata)"
    )
    parser.add_argument("code", help="a Python file, or a model response holding a ```python block")
    parser.add_argument("--timeout", type=float, default=6.0, help="seconds per test (default 6)")
    parser.add_argument(
        "--memory-mb", type=int, default=1024, help="address-space limit (default 1024)"
    )
    parser.add_argument("--stop-early", action="store_true", help="stop at the first failing test")
    args = parser.parse_args(argv)
    try:
        problem = load_problem_file(args.problem)
        with open(args.code) as f:
            code: str | None = f.read()
    except (OSError, ValueError) as err:
        print(f"exec-check: {err}", file=sys.stderr)
        return 2
    if code is not None and "```" in code:  # a whole model response: take its last fenced block
        code = extract_code(code)
    try:
        limits = Limits(wall_s=args.timeout, memory_mb=args.memory_mb)
    except ValueError as err:
        print(f"exec-check: {err}", file=sys.stderr)
        return 2
    try:
        verdict = evaluate_code(problem, code, limits=limits, stop_early=args.stop_early)
    except SandboxUnavailable as err:
        print(f"exec-check: {err}", file=sys.stderr)
        return 2
    print(json.dumps(verdict.to_dict(), indent=2))
    return 0 if verdict.passed else 1
