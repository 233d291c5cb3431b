"""`sweep --launcher ray`: each cell of a planned sweep is one Ray task on whatever cluster
``ray.init`` reaches (a local one by default, or the one at ``--address``).

Only the dispatch differs from the sequential launcher: the cells, their checks and their files are
``sweep.py``'s and ``cell.py``'s. Each task asks for what its configuration runs on (``resources``):
its GPUs from its device settings, CPU cells none; it loads its own pair, scores its cell, and writes
the cell's files itself, atomically, into the output folder (which every node must see). A cell never
shares a file with another: a configured ``accounting_path`` becomes one file per cell
(``cell.own_accounting``). A task whose worker dies is not retried by Ray: the cell is reported failed
and the next run of the same command scores it again.

Ray is an optional dependency (``pip install 'lm-eval-routed[ray]'``) imported only here.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.cell import Cell, own_accounting, run_cell, runtime_for
from lm_eval_routed.jobs.launch import CellFailure, Progress, one_line

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

    from lm_eval_routed.jobs.sweep import SweepPlan

log = logging.getLogger(__name__)

INSTALL = "--launcher ray needs Ray, an optional extra: pip install 'lm-eval-routed[ray]'"
POLL_S = 5.0  # how often the driver asks which cells have started (the progress line's "running")


@dataclass(frozen=True)
class RayOptions:
    """Where the cells run and what a CPU cell asks for."""

    address: str | None = None  # None: a new local cluster (or the one RAY_ADDRESS names)
    cpus_per_cell: int = 1  # CPUs each cell asks for (a cell's torch threads follow it)


@dataclass(frozen=True)
class Resources:
    """What one cell's Ray task asks for."""

    cpus: int
    gpus: int


def require_ray() -> None:
    """One line saying how to install Ray where it is missing."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL) from None


def resources(cfg: RoutedConfig, cluster_has_gpus: bool, cpus: int = 1) -> Resources:
    """A cell's ask: as many GPUs as the highest GPU index its ``device``, ``llm_device_map`` and
    ``max_memory`` name, plus one (inside the task Ray numbers its GPUs from 0, so the indices the
    configuration names exist there); ``device=auto`` is one GPU on a cluster with GPUs, else CPU."""
    from lm_eval_routed.loading.placement_keys import as_device, parse_device_map, parse_max_memory

    named: list[Any] = []
    if cfg.device == "auto":
        named += [0] if cluster_has_gpus else []
    else:
        named.append(as_device(cfg.device, "device"))
    if cfg.llm_device_map is not None:
        placed = parse_device_map(cfg.llm_device_map)
        named += list(placed.values()) if isinstance(placed, dict) else []
    if cfg.max_memory is not None:
        named += list(parse_max_memory(cfg.max_memory))
    gpus = [d for d in named if isinstance(d, int)]
    return Resources(cpus, max(gpus) + 1 if gpus else 0)


def run_on_ray(plan: SweepPlan, options: RayOptions) -> list[CellFailure]:
    """Run the plan's cells as Ray tasks, at once as far as the cluster allows; the failures."""
    if not plan.todo:
        return []
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=options.address,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = options.address or "the local machine"
            raise ConfigError(
                f"cannot start or reach a Ray cluster at {where} ({one_line(err)}); start one with "
                "`ray start --head`, or leave --address out for a local one"
            ) from None
    try:
        return _dispatch(ray, plan, options)
    finally:
        if started_here:
            ray.shutdown()


def _dispatch(ray: Any, plan: SweepPlan, options: RayOptions) -> list[CellFailure]:
    """Submit every cell at once (Ray queues what the cluster cannot hold yet); wait for them all."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    has_gpus = any(n.get("GPU", 0) > 0 for n in nodes)
    needs = {c.tag: resources(c.cfg, has_gpus, options.cpus_per_cell) for c in plan.todo}
    for cell in plan.todo:
        _check_fits(cell, needs[cell.tag], nodes)
    starts = ray.remote(num_cpus=0)(_Starts).remote()
    task = ray.remote(_cell_task)
    cwd = str(Path.cwd())
    pending = {
        task.options(
            num_cpus=needs[c.tag].cpus,
            num_gpus=needs[c.tag].gpus,
            max_retries=0,  # a dead worker fails its cell; the next run scores it again
            name=c.tag,
        ).remote(c, plan.out.resolve(), plan.limit, plan.include_path, cwd, starts): c
        for c in plan.todo
    }
    progress = Progress(len(plan.todo))
    failures: list[CellFailure] = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for tag in ray.get(starts.take.remote()):
                progress.start(tag)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as err:  # the task's own error, or its worker's death
                    cause = getattr(err, "cause", None) or err  # a task's error wraps the cell's
                    failures.append(CellFailure(cell.tag, one_line(cause)))
                    progress.fail(cell.tag, failures[-1].cause)
                else:
                    progress.finish(cell.tag)
    except BaseException:  # interrupted: stop the cells still running on a cluster that outlives us
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return failures


def _check_fits(cell: Cell, need: Resources, nodes: list[dict[str, float]]) -> None:
    """Refuse a cell no node of the cluster can hold (Ray would wait for one for ever)."""
    if any(n.get("CPU", 0) >= need.cpus and n.get("GPU", 0) >= need.gpus for n in nodes):
        return
    biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    raise ConfigError(
        f"{cell.tag} asks for {need.gpus} GPU(s) and {need.cpus} CPU(s), more than any node of the "
        f"Ray cluster has (the largest: {biggest.get('GPU', 0):g} GPUs, {biggest.get('CPU', 0):g} "
        "CPUs); change its device settings or --cpus-per-cell, or add a larger node"
    )


class _Starts:
    """A Ray actor the cells' tasks tell when they begin, so the driver can count those running."""

    def __init__(self) -> None:
        self.tags: list[str] = []

    def add(self, tag: str) -> None:
        self.tags.append(tag)

    def take(self) -> list[str]:
        out, self.tags = self.tags, []
        return out


def _cell_task(
    cell: Cell, out: Path, limit: int | None, include_path: str | None, cwd: str, starts: Any
) -> None:
    """One cell on a Ray worker: its own pair loaded, its files written (the sequential cell's code)."""
    starts.add.remote(cell.tag)
    from lm_eval_routed.jobs.sweep_cli import job_logging

    job_logging()
    if not Path(cwd).is_dir():
        raise ConfigError(
            f"the folder the sweep was started in, {cwd}, is not on this node: start it from a "
            "folder every node sees, with the matrix's paths under it or absolute"
        )
    os.chdir(cwd)  # the matrix's relative paths mean what they mean to the sequential launcher
    cell = own_accounting(cell)
    run_cell(cell, runtime_for(cell.cfg), out, limit, _task_index(include_path))


@functools.lru_cache(maxsize=4)
def _task_index(include_path: str | None) -> TaskManager:
    """lm-eval's task index, built once per worker process (indexing takes seconds; Ray hands a
    worker the next CPU cell of the same sweep)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)
