"""Dataset loading for the shipped tasks: hub datasets by default, local JSONL under ROUTED_TASKS_DATA.

Every row is checked as it loads, so a bad file stops the task build with one line naming the file,
the line and the field, instead of a traceback from deep inside lm-eval, or a row quietly scored 0:
a line that is not a JSON object, a required column missing (or null), a field whose spelling differs
between rows (the dataset takes its columns from the first row and would drop the other), and what a
task's own ``check_row`` refuses (an AIME answer that is not an integer; LiveCodeBench: a contest_date
that does not parse, tests that do not decode, a problem with no tests). Every row is checked before a
task selects any (LiveCodeBench's contest window), so a broken row is named as broken, never reported
as a window or filter that matched nothing.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets

from lm_eval_routed.errors import ConfigError

ENV = "ROUTED_TASKS_DATA"

# A required column: one name, or alternatives of which a row must hold one ("problem" / "Problem").
Column = str | tuple[str, ...]
# Raises ValueError (naming the field) when a row cannot be scored.
RowCheck = Callable[[dict[str, Any]], None]


def load_rows(
    local_name: str,
    hub_id: str,
    split: str,
    config: str | None = None,
    gated: bool = False,
    columns: Sequence[Column] = (),
    check_row: RowCheck | None = None,
) -> dict[str, datasets.Dataset]:
    """``{"test": Dataset}`` from ``$ROUTED_TASKS_DATA/<local_name>.jsonl`` if set, else from the hub."""
    folder = os.environ.get(ENV)
    if folder:
        path = Path(folder) / f"{local_name}.jsonl"
        if not Path(folder).is_dir():
            raise ConfigError(
                f"{ENV}={folder} is not a folder; point it at the folder holding {path.name} or "
                f"unset {ENV}"
            )
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; {ENV} needs {path.name} to be a JSONL file")
        if not path.is_file():
            raise ConfigError(f"{ENV}={folder} but {path.name} is not there; add it or unset {ENV}")
        return load_jsonl(path, columns, check_row)
    try:
        data = datasets.load_dataset(hub_id, config, split=split)
    except Exception as err:  # noqa: BLE001  (hub errors come in many types; each becomes one line)
        hint = " (gated: accept its terms on the hub and set HF_TOKEN)" if gated else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot load {hub_id}{hint}: {first}; or set {ENV} to a folder holding "
            f"{local_name}.jsonl"
        ) from None
    for column in columns:
        if not set(_names(column)) & set(data.column_names):
            raise ConfigError(
                f"{hub_id} has no column {_show(column)}; its columns: {', '.join(data.column_names)}"
            )
    if check_row is not None:
        for i, row in enumerate(data):
            _checked(check_row, row, f"{hub_id} row {i}")
    return {"test": data}


def load_jsonl(
    path: Path, columns: Sequence[Column] = (), check_row: RowCheck | None = None
) -> dict[str, datasets.Dataset]:
    """``{"test": Dataset}`` from a JSONL file, every row checked (see the module's docstring)."""
    numbered = read_jsonl(path)
    first_no, first = numbered[0]
    for line_no, row in numbered:
        where = f"{path} line {line_no}"
        _same_fields(row, first, where, first_no)
        for column in columns:
            if all(row.get(name) is None for name in _names(column)):
                raise ConfigError(
                    f"{where}: field {_show(column)} is missing or null; every row needs it"
                )
        if check_row is not None:
            _checked(check_row, row, where)
    rows = [row for _, row in numbered]
    try:
        return {"test": datasets.Dataset.from_list(rows)}
    except Exception as err:  # noqa: BLE001  (Arrow's type errors: which column, which line)
        raise ConfigError(_mixed_types(path, numbered) or f"{path}: {err}") from None


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line; a line that is not a JSON object is one line."""
    try:
        data = path.read_bytes()
        # EvalPlus's problem files may come gzipped, as it writes and reads them
        text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")
        lines = text.splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    except (OSError, EOFError) as err:  # gzip's errors included
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    rows = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{path} line {line_no} is not valid JSON ({err.msg} at column {err.colno}); "
                "write one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise ConfigError(
                f"{path} line {line_no} is a JSON {type(row).__name__}, not an object; write one "
                "object of the task's fields per line"
            )
        rows.append((line_no, row))
    if not rows:
        raise ConfigError(f"{path} holds no rows; write one JSON object per line")
    return rows


def _names(column: Column) -> tuple[str, ...]:
    return (column,) if isinstance(column, str) else column


def _show(column: Column) -> str:
    return " or ".join(repr(name) for name in _names(column))


def _same_fields(row: dict[str, Any], first: dict[str, Any], where: str, first_no: int) -> None:
    """A field the first row lacks would be dropped from every row: refuse it, naming the spelling
    the first row uses when only the case differs."""
    lower = {key.lower(): key for key in first}
    for key in row:
        if key in first:
            continue
        if key.lower() in lower:
            raise ConfigError(
                f"{where}: field {key!r} is spelled {lower[key.lower()]!r} on line {first_no}; "
                "spell each field the same way in every row"
            )
        raise ConfigError(
            f"{where}: field {key!r} is not on line {first_no}, whose fields every row takes; "
            "give every row the same fields"
        )


def _checked(check_row: RowCheck, row: dict[str, Any], where: str) -> None:
    try:
        check_row(row)
    except ValueError as err:  # ConfigError included
        raise ConfigError(f"{where}: {err}") from None


def _mixed_types(path: Path, numbered: list[tuple[int, dict[str, Any]]]) -> str | None:
    """The first field holding values of two JSON types (Arrow needs one per column), if any."""
    kinds: dict[str, tuple[str, int]] = {}
    for line_no, row in numbered:
        for key, value in row.items():
            if value is None:
                continue
            kind = (
                "number"
                if isinstance(value, int | float) and not isinstance(value, bool)
                else (type(value).__name__)
            )
            seen = kinds.setdefault(key, (kind, line_no))
            if seen[0] != kind:
                return (
                    f"{path} line {line_no}: field {key!r} is a {kind} but a {seen[0]} on line "
                    f"{seen[1]}; give it one type in every row"
                )
    return None
