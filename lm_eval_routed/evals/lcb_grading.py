"""LiveCodeBench's grading rules: the program header, stdout comparison and functional comparison.

These follow the official grader (``lcb_runner/evaluation/testing_util.py``), so a pass@1 measured
here means what the leaderboard's does. tasks/README.md lists the few deliberate differences.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# The official header: a star import of each of these, in this order, then a plain import of each
# but the last two, then a recursion limit of 50000. Order matters: later star imports shadow
# earlier names (``from builtins import *`` restores ``pow`` and ``open``; ``import copy`` rebinds
# ``copy`` to the module), so a program sees the very namespace it sees there.
STAR_MODULES = (
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
)
RECURSION_LIMIT = 50_000
HEADER = (
    "".join(f"from {m} import *\n" for m in STAR_MODULES)
    + "".join(f"import {m}\n" for m in STAR_MODULES if m not in ("builtins", "typing"))
    + f"sys.setrecursionlimit({RECURSION_LIMIT})\n"
)
# The official grading process raises Python's int<->str digit limit to this (huge answers print).
INT_MAX_STR_DIGITS = 50_000

_SHOWN = 120  # characters of a mismatching line or value quoted in a verdict


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN // 2] + " ... " + text[-_SHOWN // 2 :]


# ------------------------------------------------------------------------- stdin tests


def output_lines(text: str) -> list[str]:
    """The lines the official grader compares: whole text stripped, split on newlines, each stripped.

    Blank lines inside the output are kept; leading and trailing ones are not.
    """
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None


def lines_match(got: str, expected: str) -> bool:
    """One stripped line: equal as text, or every token of both is a Decimal and they are equal."""
    if got == expected:
        return True
    got_numbers, expected_numbers = _decimals(got), _decimals(expected)
    if got_numbers is None or expected_numbers is None:
        return False
    try:
        return got_numbers == expected_numbers  # exact: 1e+18 != 999999999999999999
    except InvalidOperation:  # a signalling NaN refuses to compare
        return False


def stdout_mismatch(got: str, expected: str) -> str:
    """Why ``got`` fails against ``expected`` under the official rules; empty when it passes."""
    got_lines, expected_lines = output_lines(got), output_lines(expected)
    if len(got_lines) != len(expected_lines):
        return f"{len(got_lines)} output lines, expected {len(expected_lines)}"
    for number, (g, e) in enumerate(zip(got_lines, expected_lines), start=1):
        if not lines_match(g, e):
            return f"line {number}: got {_clip(g)!r}, expected {_clip(e)!r}"
    return ""


def stdout_matches(got: str, expected: str) -> bool:
    """Whether a stdin test's output passes (see :func:`stdout_mismatch`)."""
    return not stdout_mismatch(got, expected)


# ------------------------------------------------------------------------- functional tests


class Opaque:
    """A returned value the harness cannot rebuild (a set, a deque, a user class): equals nothing."""

    def __init__(self, type_name: str, text: str):
        self.type_name, self.text = type_name, text

    def __eq__(self, other) -> bool:
        return False

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<{self.type_name}: {self.text}>"


class ResultError(ValueError):
    """The framed result of a functional test is malformed."""


def _numpy():
    try:
        import numpy
    except ImportError:
        return None
    return numpy


# numpy dtypes rebuilt: booleans, numbers, text and objects, of a sane item size (a result is data
# from an untrusted program: a dtype of a gigabyte per item must not allocate in the harness).
_NUMPY_KINDS = "biufcUO"
_NUMPY_ITEMSIZE = 1 << 16


def _dtype(numpy, text: str):
    kind = numpy.dtype(text)
    if kind.kind not in _NUMPY_KINDS or kind.itemsize > _NUMPY_ITEMSIZE:
        raise ValueError(f"dtype {text} is not rebuilt")
    return kind


def _numpy_scalar(dtype: str, value):
    numpy = _numpy()
    if numpy is None:
        return value  # the Python scalar of the same value: equal to what numpy's would be, nearly
    try:
        return _dtype(numpy, dtype).type(value)
    except (TypeError, ValueError, OverflowError):
        return Opaque(f"numpy {dtype}", repr(value)[:_SHOWN])


def _numpy_array(dtype: str, shape: list, flat: list):
    numpy = _numpy()
    if not all(isinstance(n, int) and n >= 0 for n in shape) or math.prod(shape) != len(flat):
        raise ResultError("an array's size does not match its shape")
    if numpy is None:
        return Opaque("numpy.ndarray", repr(flat)[:_SHOWN])
    try:
        kind = _dtype(numpy, dtype)
        if kind.kind != "O":
            return numpy.array(flat, dtype=kind).reshape(shape)
        array = numpy.empty(len(flat), dtype=kind)
        for i, item in enumerate(flat):  # element by element: lists stay objects, not new axes
            array[i] = item
        return array.reshape(shape)
    except (TypeError, ValueError, OverflowError):
        return Opaque(f"numpy.ndarray {dtype}", repr(flat)[:_SHOWN])


_TAGS = {
    "t": lambda p: tuple(p),
    "d": lambda p: dict((k, v) for k, v in p),
    "i": lambda p: int(p, 16),
    "f": lambda p: float.fromhex(p),
    "c": lambda p: complex(float.fromhex(p[0]), float.fromhex(p[1])),
    "q": lambda p: Fraction(int(p[0], 16), int(p[1], 16)),
    "D": lambda p: Decimal(p),
    "n": lambda p: _numpy_scalar(*p),
    "a": lambda p: _numpy_array(*p),
    "o": lambda p: Opaque(str(p[0]), str(p[1])),
}


def _untag(obj: dict):
    if len(obj) != 1:
        raise ResultError("a tagged value has one key")
    ((tag, payload),) = obj.items()
    if tag not in _TAGS:
        raise ResultError(f"unknown tag {tag!r}")
    try:
        return _TAGS[tag](payload)
    except (TypeError, ValueError, ArithmeticError, InvalidOperation) as err:
        raise ResultError(f"bad {tag!r} value: {err}") from None


def decode_result(text: str):
    """The value a functional solution returned, rebuilt from the runner's encoding."""
    try:
        return json.loads(text, object_hook=_untag)
    except RecursionError:
        raise ResultError("the result is nested too deeply to rebuild") from None
    except ValueError as err:
        raise ResultError(str(err)) from None


def _parse_int(digits: str) -> int:
    # Decimal -> int is not bound by Python's digit limit on str -> int.
    return int(digits) if len(digits) < 4000 else int(Decimal(digits))


def parse_expected(text: str):
    """A functional test's expected output (JSON; integers of any length)."""
    return json.loads(text, parse_int=_parse_int)


def values_equal(got, expected) -> bool:
    """The official comparison: a top-level tuple becomes a list, then ``==``, no tolerance.

    Raises whatever ``==`` or its truth value raises (a numpy array of several elements), which
    the official grader counts as a runtime error.
    """
    if isinstance(got, tuple):
        got = list(got)
    return bool(got == expected)


def show_value(value) -> str:
    """A short repr of a value for a verdict's detail."""
    try:
        return _clip(repr(value))
    except Exception:  # a value's repr must not break a verdict
        return "<unprintable>"
