"""Sweep: score a matrix of routed configurations x tasks, resumably, and collect the cells' summaries.

Three steps, whatever runs the cells: ``plan_sweep`` checks the matrix and lists the cells not yet on
disk (before any model loads); a launcher runs each of those with ``cell.run_cell`` (this process, one
after another, loading each pair once: ``run_sequential``; or one Ray task per cell:
``sweep_ray.run_on_ray``); ``collect`` reads every cell's summary back. A cell whose summary exists is
skipped, so an interrupted sweep picks up where it stopped and never recomputes a finished cell; one
whose summary says it ran under other settings (another ``limit``, or another configuration under the
same label) is refused rather than passed off as this one. A cell that fails is reported with its
one-line cause and the others still run; the next run retries only what failed or is missing.

Nothing is lost to a kill: a cell's files are written to a temporary name and renamed into place, the
summary last, so a cell is either done or absent; a summary that does not parse (written by hand, or
by a version that wrote in place) is scored again. Records a killed cell left in ``accounting_path``
carry its ``cell`` tag and are dropped before it runs again, so the file holds each record once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.cell import Cell, cell_path, run_cell, runtime_for
from lm_eval_routed.jobs.launch import CellFailure, Launcher, Progress, SweepIncomplete, one_line
from lm_eval_routed.jobs.matrix import (  # noqa: F401  (the checks, importable from here too)
    check_labels,
    check_tasks,
    check_unique_tasks,
    preflight_matrix,
    slug,
)
from lm_eval_routed.jobs.summaries import config_dict, read_summary

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

    from lm_eval_routed.jobs.sweep_ray import RayOptions
    from lm_eval_routed.loading.runtime import RoutedRuntime

log = logging.getLogger(__name__)


@dataclass
class SweepPlan:
    """A checked matrix: every cell, those not yet on disk, and what running one needs."""

    out: Path
    cells: list[Cell]
    todo: list[Cell]
    limit: int | None
    include_path: str | None
    task_manager: TaskManager | None  # lm-eval's task index, built once where cells remain


def run_sweep(
    configs: list[dict[str, Any]],
    tasks: list[str],
    out: Path,
    base: dict[str, Any] | None = None,
    limit: int | None = None,
    include_path: str | None = None,
    launcher: Launcher = Launcher.SEQUENTIAL,
    ray: RayOptions | None = None,
    source: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run every (config, task) cell not already on disk; return all cell summaries (raises
    ``SweepIncomplete`` naming the cells that failed, after the others ran). ``source``, the matrix
    file, starts the pre-flight's errors."""
    if launcher is Launcher.RAY:
        from lm_eval_routed.jobs.sweep_ray import RayOptions, require_ray, run_on_ray

        require_ray()  # before the matrix is planned: a missing extra is the first thing to say
        plan = plan_sweep(configs, tasks, out, base, limit, include_path, source)
        return collect(plan, run_on_ray(plan, ray or RayOptions()))
    plan = plan_sweep(configs, tasks, out, base, limit, include_path, source)
    return collect(plan, run_sequential(plan))


def plan_sweep(
    configs: list[dict[str, Any]],
    tasks: list[str],
    out: Path,
    base: dict[str, Any] | None = None,
    limit: int | None = None,
    include_path: str | None = None,
    source: str | Path | None = None,
) -> SweepPlan:
    """Check the matrix and every path it names (``preflight_matrix``) and list its cells, refusing
    mistakes before any model loads."""
    cfgs = preflight_matrix(configs, tasks, out, base, include_path, source)
    cells = [Cell(cfg, t) for cfg in cfgs for t in tasks]
    todo = [c for c in cells if not _done(out, c, limit)]
    if len(todo) < len(cells):
        log.info("resuming: %d of %d cells already done", len(cells) - len(todo), len(cells))
    task_manager = None
    if todo:
        from lm_eval.tasks import TaskManager

        # one index for the whole sweep, and a misspelt task fails before any model loads
        task_manager = TaskManager(include_path=include_path)
        check_tasks(tasks, task_manager.all_tasks)
    return SweepPlan(out, cells, todo, limit, include_path, task_manager)


def run_sequential(plan: SweepPlan) -> list[CellFailure]:
    """Run the plan's cells in this process, one after another, each pair loaded once."""
    progress = Progress(len(plan.todo))
    failures: list[CellFailure] = []
    shared: RoutedRuntime | None = None
    for cell in plan.todo:
        progress.start(cell.tag)
        try:
            shared = runtime_for(cell.cfg, shared)
            run_cell(cell, shared, plan.out, plan.limit, plan.task_manager)
        except Exception as err:  # one cell's failure is reported, and the others still run
            log.debug("%s failed", cell.tag, exc_info=True)
            failures.append(CellFailure(cell.tag, one_line(err)))
            progress.fail(cell.tag, failures[-1].cause)
            continue
        progress.finish(cell.tag)
    return failures


def collect(plan: SweepPlan, failures: list[CellFailure]) -> list[dict[str, Any]]:
    """Every cell's summary, read back from disk, in the matrix's order."""
    failed = {f.tag for f in failures}
    summaries = []
    for cell in plan.cells:
        if cell.tag in failed:
            continue
        summary = read_summary(cell_path(plan.out, cell))
        if summary is None:  # its task said done, yet the file is not here to read
            failures.append(
                CellFailure(
                    cell.tag,
                    f"no summary at {cell_path(plan.out, cell)} (the output folder must be one "
                    "every worker writes to, e.g. a shared filesystem)",
                )
            )
            continue
        summaries.append(summary)
    if failures:
        raise SweepIncomplete(summaries, failures, len(plan.todo))
    return summaries


def _done(out: Path, cell: Cell, limit: int | None) -> bool:
    """Whether ``cell`` is on disk; a cell scored under other settings is refused, not reused."""
    path = cell_path(out, cell)
    if not path.is_file():
        return False
    stored = read_summary(path)
    if stored is None:
        log.warning(
            "%s is incomplete or unreadable; scoring %s on %s again",
            path,
            cell.cfg.label,
            cell.task,
        )
        return False
    now = {**config_dict(cell.cfg), "limit": limit}
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
