"""Runs inside the sandbox beside a solution: executes it as LiveCodeBench's grader does and reports.

This file is copied into the sandbox's working directory and run as a script; it uses only the
standard library (and numpy, only when the solution imported it). Expected outputs never reach
this process: the harness compares what it reports.

The program is the official header (HEADER file) followed by the solution, run as one module.

``runner.py stdin HEADER SOLUTION``
    Run the program as ``__main__``. ``SystemExit`` (``sys.exit(1)``, ``exit()``) ends it like a
    normal return, so its output is judged (the official grader catches it the same way); any other
    uncaught exception is a runtime error (exit status 1).

``runner.py call HEADER SOLUTION NAME``
    Load the program as a module (not ``__main__``), take ``Solution().NAME`` when the code contains
    ``class Solution`` and the module's ``NAME`` otherwise, call it with one JSON argument per input
    line, and write the returned value, encoded by :func:`encode`, between two NUL bytes on the
    original stdout. The program's own prints go to /dev/null.
"""

import ast
import json
import math
import os
import sys
import traceback
import types

_SMALL_INT = 1 << 62  # larger ints travel as hex: no str<->int digit limit applies to base 16
_REPR_CHARS = 200


def _opaque(value) -> dict:
    try:
        text = repr(value)[:_REPR_CHARS]
    except Exception:  # a broken __repr__ must not hide the result
        text = "<unprintable>"
    return {"o": [type(value).__qualname__, text]}


def encode(value) -> object:
    """A JSON-ready form of a returned value that the harness rebuilds with the same ``==``.

    Lists, finite floats, small ints, strings, booleans and None are plain JSON; everything else is
    an object with one tag key: ``t`` tuple, ``d`` dict (key/value pairs), ``i`` big int (hex),
    ``f`` non-finite float (hex), ``c`` complex, ``q`` Fraction, ``D`` Decimal, ``n`` numpy scalar,
    ``a`` numpy array, ``o`` anything else (type name and repr; it equals nothing). Subclasses of
    the built-in types travel as their base type.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        number = int.__int__(value)
        return number if -_SMALL_INT < number < _SMALL_INT else {"i": hex(number)}
    if isinstance(value, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else {"f": number.hex()}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, list):
        return [encode(v) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"t": [encode(v) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[encode(k), encode(v)] for k, v in dict.items(value)]}
    if isinstance(value, complex):
        return {"c": [value.real.hex(), value.imag.hex()]}
    return _encode_library(value)


def _encode_library(value):
    # Only modules the program (or the header) already loaded can have made such a value.
    fractions, decimal, numpy = (sys.modules.get(m) for m in ("fractions", "decimal", "numpy"))
    if fractions is not None and isinstance(value, fractions.Fraction):
        return {"q": [hex(value.numerator), hex(value.denominator)]}
    if decimal is not None and isinstance(value, decimal.Decimal):
        return {"D": str(value)}
    if numpy is not None and isinstance(value, numpy.ndarray):
        flat = [encode(v) for v in value.ravel().tolist()]
        return {"a": [value.dtype.str, list(value.shape), flat]}
    if numpy is not None and isinstance(value, numpy.generic):
        return {"n": [value.dtype.str, encode(value.item())]}
    return _opaque(value)


def _compile(header_path: str, path: str):
    """Code of header + solution as one module (as the official grader runs it), numbered so that
    the solution's lines keep their own numbers in tracebacks."""
    with open(header_path) as f:
        header = f.read()
    with open(path) as f:
        source = f.read()
    shift = header.count("\n")
    try:
        tree = ast.parse(header + source, filename=path)
    except SyntaxError as err:
        err.lineno = err.lineno - shift if err.lineno else err.lineno
        err.end_lineno = err.end_lineno - shift if err.end_lineno else err.end_lineno
        raise
    for node in tree.body[len(ast.parse(header).body) :]:
        ast.increment_lineno(node, -shift)
    return compile(tree, path, "exec", dont_inherit=True), source


def _print_traceback(exc: BaseException, path: str) -> None:
    """The traceback from the solution's first frame on (the runner's own frames say nothing)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)


def _run_stdin(header_path: str, path: str) -> int:
    main = types.ModuleType("__main__")  # no __file__, as officially
    sys.modules["__main__"] = main  # pickle, dataclasses and threads find the program's names
    sys.argv[:] = [path]
    try:
        exec(_compile(header_path, path)[0], main.__dict__)  # noqa: S102  (sandboxed by the caller)
    except SystemExit:
        return 0
    except BaseException as exc:  # any other way out is a runtime error
        _print_traceback(exc, path)
        return 1
    return 0


def _run_call(header_path: str, path: str, name: str) -> int:
    result_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the solution's prints must not mix with the result
    args = [json.loads(line) for line in sys.stdin.read().split("\n") if line.strip()]
    module = types.ModuleType("solution")
    try:
        code, source = _compile(header_path, path)
        exec(code, module.__dict__)  # noqa: S102  (sandboxed by the caller)
        target = module.Solution() if "class Solution" in source else module
        function = getattr(target, name, None)
        if function is None:
            print(f"the solution defines no {name}", file=sys.stderr)
            return 1
        value = function(*args)
    except SystemExit:
        raise  # leaves without a result, which fails the test
    except BaseException as exc:
        _print_traceback(exc, path)
        return 1
    payload = json.dumps(encode(value)).encode()
    os.write(result_fd, b"\0" + payload + b"\0")
    return 0


def main(argv: list[str]) -> int:
    """Dispatch: ``stdin HEADER SOLUTION`` or ``call HEADER SOLUTION NAME``."""
    if argv[:1] == ["stdin"] and len(argv) == 3:
        return _run_stdin(argv[1], argv[2])
    if argv[:1] == ["call"] and len(argv) == 4:
        return _run_call(argv[1], argv[2], argv[3])
    print("usage: runner.py stdin HEADER SOLUTION | call HEADER SOLUTION NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
