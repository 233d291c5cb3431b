"""EvalPlus's problem files a user hands it (``HUMANEVAL_OVERRIDE_PATH``, ``MBPP_OVERRIDE_PATH``),
checked before any model loads: EvalPlus reads them only after the model is built, and a missing field
then surfaces as a KeyError deep in its loop, hours of generation later, or as its bare assert."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.evals.task_data import read_jsonl

# dataset -> (EvalPlus module, its override setting); evalperf reads both
OVERRIDES = {
    "humaneval": ("evalplus.data.humaneval", "HUMANEVAL_OVERRIDE_PATH"),
    "mbpp": ("evalplus.data.mbpp", "MBPP_OVERRIDE_PATH"),
}
# the fields EvalPlus's generation and evaluation read from each problem, with their JSON types
FIELDS: dict[str, tuple[type, ...]] = {
    "task_id": (str,),
    "prompt": (str,),
    "entry_point": (str,),
    "canonical_solution": (str,),
    "contract": (str,),
    "base_input": (list,),
    "plus_input": (list,),
    "atol": (int, float),
}


def check_overrides(dataset: str) -> None:
    """Each override file ``dataset`` would read (as EvalPlus read its setting) is checked."""
    for name in ("humaneval", "mbpp") if dataset == "evalperf" else (dataset,):
        if name not in OVERRIDES:
            continue
        module, setting = OVERRIDES[name]
        path = getattr(importlib.import_module(module), setting, None)
        if path:
            check_problem_file(Path(path), setting)


def check_problem_file(path: Path, setting: str) -> None:
    """Every row of an EvalPlus problem file has each field EvalPlus reads, of its type, and a
    task_id of its own; else one line naming the file, the line and the field."""
    if path.is_dir():
        raise ConfigError(f"{setting}={path} is a folder; give the problems' JSONL file")
    if not path.is_file():
        raise ConfigError(f"{setting}={path} does not exist; fix the path or unset {setting}")
    first_line: dict[str, int] = {}
    for line_no, row in read_jsonl(path):
        for key, kinds in FIELDS.items():
            _check_field(row, key, kinds, f"{path} line {line_no}")
        task_id = row["task_id"]
        if task_id in first_line:
            raise ConfigError(
                f"{path} line {line_no}: field 'task_id' {task_id!r} is on line "
                f"{first_line[task_id]} too; give each problem its own task_id"
            )
        first_line[task_id] = line_no


def _check_field(row: dict[str, Any], key: str, kinds: tuple[type, ...], where: str) -> None:
    value = row.get(key)
    if value is None:
        raise ConfigError(f"{where}: field {key!r} is missing or null; EvalPlus reads it")
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = {str: "text", list: "a list", int: "a number"}[kinds[0]]
        raise ConfigError(f"{where}: field {key!r} is {value!r:.60}, not {want}")
