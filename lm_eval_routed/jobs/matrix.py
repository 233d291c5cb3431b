"""A sweep matrix, checked whole before any model loads: the file itself (``read_matrix``) and every
path and configuration it names (``preflight_matrix``).

Every launcher of a matrix (``lm-eval-routed sweep``, ``run_sweep``'s callers, any other runner of its
cells) calls ``preflight_matrix`` before it loads a model or writes a file, so a misspelt folder, a
damaged router checkpoint or an output folder that cannot be made stops it with one line naming the
key, the path and what is wrong, instead of a run that scores the wrong index or fails hours in.
Nothing here loads weights: router checkpoints and model folders are read as far as their headers.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError

MATRIX_KEYS = ("base", "configs", "include_path", "metric", "tasks")
_YAML_SUFFIXES = (".yaml", ".yml")


def read_matrix(path: Path) -> dict[str, Any]:
    """The matrix file, checked: ``configs`` and ``tasks`` non-empty lists, no unknown keys, each
    key of its type."""
    text = _read_text(path, "matrix file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}; fix that line") from None
    if data is None:
        raise ConfigError(f"{path} is empty; write configs: and tasks: in it")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with configs: and tasks:")
    unknown = sorted(set(data) - set(MATRIX_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(MATRIX_KEYS)}")
    configs, tasks = data.get("configs"), data.get("tasks")
    if (
        not configs
        or not isinstance(configs, list)
        or not all(isinstance(c, dict) for c in configs)
    ):
        raise ConfigError(f"{path}: configs: must be a list of model_args mappings, one per config")
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks or not isinstance(tasks, list):
        raise ConfigError(f"{path}: tasks: must list at least one lm-eval task")
    for i, task in enumerate(tasks, 1):
        if not isinstance(task, str) or not task.strip():
            raise ConfigError(
                f"{path}: tasks: item {i} is {task!r}, not a task name or a task YAML's path"
            )
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base: must be a mapping of model_args")
    for key in ("include_path", "metric"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(
                f"{path}: {key}: is {data[key]!r}; give one "
                f"{'folder path' if key == 'include_path' else 'metric name'}"
            )
    return {**data, "base": base, "configs": configs, "tasks": tasks}


def _read_text(path: Path, what: str) -> str:
    """A user's text file, or one line saying why it cannot be read."""
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give the YAML file itself")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None


def preflight_matrix(
    configs: list[dict[str, Any]],
    tasks: list[str],
    out: Path,
    base: dict[str, Any] | None = None,
    include_path: str | None = None,
    source: str | Path | None = None,
) -> list[RoutedConfig]:
    """Every configuration of a matrix built and checked, and every path it names, before any model
    loads or file is written: ``include_path``, task YAML paths, ``config`` files, router checkpoints
    (their files read as far as their headers), local model folders, ``accounting_path``,
    ``offload_folder`` and ``latency_model``, and the output folder ``out`` (made with its parents
    later, so only a file in its way is refused). Returns the configurations, in order. ``source``
    (the matrix file) starts each error."""
    try:
        check_unique_tasks(tasks)
        check_include_path(include_path)
        for task in tasks:
            check_task_path(task)
        cfgs = [_checked_config(i, c, base or {}) for i, c in enumerate(configs, 1)]
        check_labels(cfgs)
        check_writable_folder(out, "output folder")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}" if source else str(err)) from None
    return cfgs


def slug(cfg: RoutedConfig) -> str:
    """A configuration's folder name under ``OUT/runs/``: its label, made path-safe."""
    return path_safe(cfg.label)


def path_safe(text: str) -> str:
    """``text`` as a file or folder name: runs of other characters become one ``_``."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def check_unique_tasks(tasks: list[str]) -> None:
    """Refuse a task listed twice: both would write one cell."""
    for i, task in enumerate(tasks):
        if task in tasks[:i]:
            raise ConfigError(f"task {task!r} is listed twice; list each task once")


def check_labels(cfgs: list[RoutedConfig]) -> None:
    """Refuse two configurations that would share one results folder (and so one cell), and two
    that are the same but for their name (the same scores twice)."""
    seen: dict[str, RoutedConfig] = {}
    for i, cfg in enumerate(cfgs):
        folder = slug(cfg)
        if folder in seen and seen[folder] == cfg:
            raise ConfigError(
                f"configuration {cfg.label!r} is listed twice; list each configuration once"
            )
        if folder in seen:
            raise ConfigError(
                f"two configurations of this sweep are both labelled {cfg.label!r}; "
                "give each its own name= so their results do not overwrite each other"
            )
        seen[folder] = cfg
        twin = next((c for c in cfgs[:i] if c.replace(name=None) == cfg.replace(name=None)), None)
        if twin is not None:
            raise ConfigError(
                f"configurations {twin.label!r} and {cfg.label!r} differ only in their name, so "
                "they would score the same thing twice; drop one or change a key"
            )


def check_tasks(tasks: list[str], known: list[str]) -> None:
    """Refuse task names lm-eval does not know (a task YAML's path passes), naming the nearest."""
    names = set(known)
    for task in tasks:
        if task not in names and not Path(task).is_file():
            near = difflib.get_close_matches(task, known, n=3) or ["(none close)"]
            raise ConfigError(
                f"unknown task {task!r}; nearest: {', '.join(near)} "
                "(`lm_eval ls tasks` lists them all)"
            )


def check_include_path(include_path: str | None) -> None:
    """``include_path`` is a folder holding at least one task YAML."""
    if include_path is None:
        return
    folder = Path(include_path).expanduser()
    if not folder.exists():
        raise ConfigError(
            f"include_path {include_path!r} does not exist; give a folder of task YAMLs or drop "
            "include_path"
        )
    if not folder.is_dir():
        raise ConfigError(
            f"include_path {include_path!r} is a file, not a folder; give the folder holding it, "
            "or list the file itself under tasks:"
        )
    if next(folder.glob("**/*.yaml"), None) is None:
        raise ConfigError(
            f"include_path {include_path!r} holds no .yaml file, so it adds no task; give the "
            "folder of your task YAMLs"
        )


def check_task_path(task: str) -> None:
    """A task given as a path (a ``.yaml`` name or one with a folder in it) is a task YAML file."""
    path = Path(task).expanduser()
    if not (path.suffix in _YAML_SUFFIXES or "/" in task or os.sep in task):
        return  # a task name: lm-eval's index decides (``check_tasks``)
    if path.is_dir():
        raise ConfigError(
            f"tasks: {task!r} is a folder; put it in include_path and list its tasks by name"
        )
    if not path.is_file():
        raise ConfigError(
            f"tasks: {task!r} does not exist (a path to a task YAML); fix the path, or give "
            "the task's name"
        )
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(path, resolve_func=False)
    except Exception as err:  # noqa: BLE001  (YAML and lm-eval's own errors come in many types)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"tasks: {task!r} is not a readable task YAML ({first})") from None
    if not isinstance(cfg, dict) or not (cfg.get("task") or cfg.get("group")):
        raise ConfigError(f"tasks: {task!r} names no task: (or group:); it is not a task YAML")


def _checked_config(index: int, given: dict[str, Any], base: dict[str, Any]) -> RoutedConfig:
    """One configuration built, its router's checkpoint and its local paths checked; an error
    starts with where its key was written (``configs #N`` or ``base``)."""
    merged = {**base, **given}

    def where(key: str | None) -> str:
        from_base = key is not None and key in base and key not in given
        return "base" if from_base else f"configs #{index}"

    try:
        cfg = load_config(merged)
    except ConfigError as err:
        key = next((k for k in merged if str(err).startswith((f"{k}=", f"{k} "))), None)
        raise ConfigError(f"{where(key)}: {err}") from None
    from lm_eval_routed.routers.base import check_router

    try:
        check_router(cfg)  # router_ckpt: found, of its kind, readable, its shapes fitting
    except ConfigError as err:
        raise ConfigError(f"{where('router_ckpt')} ({cfg.label}): {err}") from None
    for key in ("slm", "llm"):
        try:
            _check_model_ref(getattr(cfg, key), key)
        except ConfigError as err:
            raise ConfigError(f"{where(key)} ({cfg.label}): {err}") from None
    for key, check in (
        ("accounting_path", check_writable_file),
        ("offload_folder", check_writable_folder),
        ("latency_model", _check_latency_model),
    ):
        value = getattr(cfg, key)
        if value is not None:
            try:
                check(Path(value), key)
            except ConfigError as err:
                raise ConfigError(f"{where(key)} ({cfg.label}): {err}") from None
    return cfg


def _check_latency_model(path: Path, key: str) -> None:
    """A latency model's JSON, read whole (``loading/latency_model.load``)."""
    from lm_eval_routed.loading import latency_model

    latency_model.load(path)


def _check_model_ref(ref: str, key: str) -> None:
    """A model given as a local path exists; a local folder's headers are whole (a hub id passes)."""
    from lm_eval_routed.loading.models import preflight

    local = ref.startswith(("/", "./", "../", "~")) or ref.endswith(".gguf")
    if local and not Path(ref).expanduser().exists():
        raise ConfigError(f"{key}={ref!r} does not exist; fix the path or give a hub id")
    preflight(ref)


def check_writable_folder(path: Path, what: str) -> None:
    """A folder that is there, or can be made: nothing but folders on the way to it."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file; give a folder")
    _check_parents(path, what)


def check_writable_file(path: Path, what: str) -> None:
    """A file that can be written (its folder made if need be): not a folder, no file on the way."""
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give a file path inside it")
    _check_parents(path.parent, what)


def _check_parents(path: Path, what: str) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{what} {str(path)!r} cannot be made: {str(existing)!r} is a file, not a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(path)!r} cannot be made: {str(existing)!r} is read-only")
