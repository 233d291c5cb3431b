"""Sweep: score a matrix of routed configurations x tasks, resumably, loading each pair once.

Each finished (config, task) cell is written to ``OUT/runs/<config-slug>/<task>.json`` (lm-eval's
metrics plus a per-run accounting summary) and ``<task>.samples.jsonl`` (one line per sample: doc id,
prompt hash, metrics, and the accounting of each of its generations, one per repeat). A cell whose
JSON exists is skipped, so an interrupted sweep picks up where it stopped and never recomputes a
finished cell; one whose JSON says it ran under other settings (another ``limit``, or another
configuration under the same label) is refused rather than passed off as this one.

Nothing is lost to a kill: both files are written to a temporary name and renamed into place, the
summary last, so a cell is either done or absent; a summary that does not parse (written by hand, or
by a version that wrote in place) is scored again. Records a killed cell left in ``accounting_path``
carry its ``cell`` tag and are dropped before it runs again, so the file holds each record once.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval_routed.adapters.joins import bare, records_by_sample
from lm_eval_routed.config import Affects, RoutedConfig, effects, keys_affecting
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic
from lm_eval_routed.jobs.matrix import (  # noqa: F401  (the checks, importable from here too)
    check_labels,
    check_tasks,
    check_unique_tasks,
    preflight_matrix,
    slug,
)
from lm_eval_routed.loading.runtime import RoutedRuntime, build_runtime, with_costs

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

log = logging.getLogger(__name__)

# accounting fields averaged over samples into a run summary
SUMMARY_FIELDS = (
    "tokens",
    "llm_share",
    "activated_params",
    "activated_params_charged",
    "activated_params_nominal",
    "latency_s",
    "modeled_latency_s",
    "switches",
)


@dataclass(frozen=True)
class Cell:
    """One (configuration, task) cell of a sweep."""

    cfg: RoutedConfig
    task: str

    @property
    def slug(self) -> str:
        return slug(self.cfg)


def cell_path(out: Path, cell: Cell) -> Path:
    """Where a finished cell's summary JSON lives."""
    return out / "runs" / cell.slug / f"{cell.task}.json"


def run_sweep(
    configs: list[dict[str, Any]],
    tasks: list[str],
    out: Path,
    base: dict[str, Any] | None = None,
    limit: int | None = None,
    include_path: str | None = None,
    source: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run every (config, task) cell not already on disk; return all cell summaries. The whole
    matrix is checked first (``preflight_matrix``; ``source``, the matrix file, starts its errors)."""
    cfgs = preflight_matrix(configs, tasks, out, base, include_path, source)
    cells = [Cell(cfg, t) for cfg in cfgs for t in tasks]
    todo = [c for c in cells if not _done(out, c, limit)]
    if len(todo) < len(cells):
        log.info("resuming: %d of %d cells already done", len(cells) - len(todo), len(cells))
    if todo:
        from lm_eval.tasks import TaskManager

        # one index for the whole sweep, and a misspelt task fails before any model loads
        task_manager = TaskManager(include_path=include_path)
        check_tasks(tasks, task_manager.all_tasks)
    shared: RoutedRuntime | None = None
    for i, cell in enumerate(todo, 1):
        log.info("[%d/%d] %s on %s", i, len(todo), cell.cfg.label, cell.task)
        shared = _runtime_for(cell.cfg, shared)
        _run_cell(cell, shared, out, limit, task_manager)
    return [json.loads(cell_path(out, c).read_text()) for c in cells]


def _done(out: Path, cell: Cell, limit: int | None) -> bool:
    """Whether ``cell`` is on disk; a cell scored under other settings is refused, not reused."""
    path = cell_path(out, cell)
    if not path.is_file():
        return False
    stored = _read_summary(path)
    if stored is None:
        log.warning(
            "%s is incomplete or unreadable; scoring %s on %s again",
            path,
            cell.cfg.label,
            cell.task,
        )
        return False
    now = {**_config_dict(cell.cfg), "limit": limit}
    # keys a cell written by an older version lacks are not compared
    before = {**stored.get("config", {}), "limit": stored.get("limit", limit)}
    changed = sorted(k for k in now if k in before and before[k] != now[k])
    if changed:
        key = changed[0]
        raise ConfigError(
            f"{path} holds {cell.cfg.label!r} run with {key}={before[key]!r}, not {now[key]!r}; "
            "write to another output folder, delete that cell to score it again, or name= it apart"
        )
    return True


def _read_summary(path: Path) -> dict[str, Any] | None:
    """A cell's summary, or None when the file is not a whole one."""
    try:
        stored = json.loads(path.read_text())
    except (ValueError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    whole = isinstance(stored, dict) and {"config", "metrics", "accounting"} <= set(stored)
    return stored if whole else None


# what loading a pair depends on: configurations that agree on these share the loaded weights
_LOAD_KEYS = keys_affecting(Affects.LOADING)
# what a cell records of its configuration and compares on resume: what changes its scores, and
# what changes its speed on the machine it ran on (where the weights were placed is in its run
# info); not its name, which is the cell's folder already
_CELL_KEYS = tuple(
    key
    for key, affects in effects().items()
    if key != "name"
    and (Affects.OUTPUT in affects or (Affects.SPEED in affects and Affects.LOADING not in affects))
)


def _runtime_for(cfg: RoutedConfig, shared: RoutedRuntime | None) -> RoutedRuntime:
    same = shared is not None and all(getattr(shared.cfg, k) == getattr(cfg, k) for k in _LOAD_KEYS)
    if not same:
        return build_runtime(cfg)
    # same pair: reuse the loaded weights and the first cell's measured costs (stable modeled latency)
    cfg = with_costs(cfg, shared.decoder.costs)
    return build_runtime(cfg, slm=shared.slm, llm=shared.llm, tokenizer=shared.tokenizer)


def _run_cell(
    cell: Cell, runtime: RoutedRuntime, out: Path, limit: int | None, task_manager: TaskManager
) -> None:
    import lm_eval

    from lm_eval_routed.adapters.lm_eval_model import RoutedLM

    lm = RoutedLM.from_runtime(runtime)
    tag = f"{cell.slug}/{cell.task}"
    lm.tags = {**lm.tags, "cell": tag}
    if runtime.cfg.accounting_path:  # what an earlier, killed run of this cell left there
        drop_records(Path(runtime.cfg.accounting_path), tag)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[cell.task],
        limit=limit,
        log_samples=True,
        task_manager=task_manager,
        random_seed=runtime.cfg.seed,
    )
    samples = _join(results["samples"][cell.task], lm.records)
    folder = cell_path(out, cell).parent
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(s, default=str) + "\n" for s in samples)
    write_atomic(folder / f"{cell.task}.samples.jsonl", lines)
    summary = {
        "label": cell.cfg.label,
        "task": cell.task,
        "config": _config_dict(cell.cfg),
        "metrics": results["results"][cell.task],
        "n_samples": len(samples),
        "limit": limit,
        "accounting": summarize([rec for s in samples for rec in s["routed"]]),
        "run_info": runtime.info()["routed"],
    }
    # the summary is written last: its presence marks the cell as done
    write_atomic(cell_path(out, cell), json.dumps(summary, indent=2, default=str))


def drop_records(path: Path, cell: str) -> None:
    """Remove from an accounting JSONL the records tagged with ``cell`` and a torn last line (a
    kill mid-write), rewriting it atomically; other lines stay as they are."""
    if not path.is_file():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # what follows the last newline is a torn line
    lines = data[:end].splitlines()
    kept = [line for line in lines if not _tagged(line, cell)]
    if end < len(data) or len(kept) < len(lines):
        log.info("%s: dropping the records an interrupted run of %s left", path, cell)
        write_atomic(path, b"".join(line + b"\n" for line in kept))


def _tagged(line: bytes, cell: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("cell") == cell


def _join(samples: list[dict], records: list[dict]) -> list[dict]:
    """One line per sample: lm-eval's metrics, target and extracted answer beside the text and the
    accounting of every generation it made (a task with ``repeats: n`` samples n answers per doc),
    in repeat order; a task with several filters has a line per filter."""
    by_doc: dict[Any, list[dict]] = {}
    for rec in sorted(records, key=lambda r: r["key"].get("repeat", 0)):
        if rec.get("scored_by") == "generate":
            by_doc.setdefault(rec["key"].get("doc_id"), []).append(rec)
    rows = []
    for sample, recs in zip(samples, records_by_sample(samples, by_doc)):
        metrics = {k: v for k, v in sample.items() if isinstance(v, int | float) and k != "doc_id"}
        rows.append(
            {
                "doc_id": sample["doc_id"],
                "prompt_hash": sample.get("prompt_hash"),
                "filter": sample.get("filter"),
                "metrics": metrics,
                "target": sample.get("target"),
                "response": (sample.get("filtered_resps") or [None])[0],
                # every repeat's text beside its record: routed[i] wrote responses[i]
                "responses": [
                    r for req in sample.get("resps") or [] for r in req if isinstance(r, str)
                ],
                "routed": [bare(r) for r in recs],
            }
        )
    return rows


def summarize(records: list[dict]) -> dict[str, float | None]:
    """Mean of each accounting field over generations (R2R's run figure for activated params);
    None for a field some generation lacks (the nominal figure of a run given no nominal sizes)."""
    if not records:
        return {}
    values = {f: [r.get(f) for r in records] for f in SUMMARY_FIELDS}
    return {f: None if None in v else statistics.fmean(v) for f, v in values.items()}


def _config_dict(cfg: RoutedConfig) -> dict[str, Any]:
    """The cell's settings as its summary stores them (JSON's types: a cost pair is a list)."""
    return json.loads(json.dumps({k: getattr(cfg, k) for k in _CELL_KEYS}))
