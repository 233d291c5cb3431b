"""Wall time of the demo matrix at a small limit, run by the sequential launcher and by Ray.

Both runs score the same cells (the demo's configurations on the demo pair, each into a fresh
folder) on the same number of cores: the sequential run gives torch ``--workers x --cpus-per-cell``
threads, the Ray run starts a local cluster of that many CPUs, each cell asking for
``--cpus-per-cell`` (so ``--workers`` cells run at once). The Ray time includes starting the cluster,
as a user of ``--launcher ray`` pays it. Prints both wall times, their ratio, and whether every cell
scored the same both ways. Measure on a quiet machine: other load moves both figures.

    python scripts/bench_sweep_launchers.py                      # routed_demo, limit 5, 2 workers
    python scripts/bench_sweep_launchers.py --tasks routed_demo,routed_demo_cot --limit 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from lm_eval_routed.jobs.demo import demo_configs
from lm_eval_routed.jobs.launch import Launcher
from lm_eval_routed.jobs.sweep import run_sweep
from lm_eval_routed.jobs.sweep_cli import job_logging, positive_int
from lm_eval_routed.jobs.sweep_ray import RayOptions


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", default="routed_demo", help="comma-separated (default: routed_demo)")
    ap.add_argument("--limit", type=positive_int, default=5, help="docs per task (default 5)")
    ap.add_argument("--workers", type=positive_int, default=2, help="cells at once under Ray (2)")
    ap.add_argument(
        "--cpus-per-cell", type=positive_int, default=1, help="each Ray cell's CPUs (1)"
    )
    ap.add_argument("--batch-size", type=positive_int, default=8)
    ap.add_argument("--device", default="cpu", help="the cells' device (default cpu)")
    args = ap.parse_args(argv)
    job_logging()
    import ray
    import torch

    tasks = [t for t in args.tasks.split(",") if t.strip()]
    base = {"config": "demo", "batch_size": args.batch_size, "device": args.device}
    cores = args.workers * args.cpus_per_cell
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(cores)
        start = time.perf_counter()
        sequential = run_sweep(
            demo_configs(), tasks, Path(tmp) / "seq", base=base, limit=args.limit
        )
        seq_s = time.perf_counter() - start

        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
        try:
            on_ray = run_sweep(
                demo_configs(),
                tasks,
                Path(tmp) / "ray",
                base=base,
                limit=args.limit,
                launcher=Launcher.RAY,
                ray=RayOptions(cpus_per_cell=args.cpus_per_cell),
            )
        finally:
            ray.shutdown()
        ray_s = time.perf_counter() - start
    same = [s["metrics"] for s in sequential] == [s["metrics"] for s in on_ray]
    matrix = f"{len(demo_configs())} configurations x {', '.join(tasks)}"
    print(f"cells: {len(sequential)} ({matrix}), limit {args.limit}")
    print(f"sequential, {cores} torch threads: {seq_s:.1f} s")
    print(f"ray, {args.workers} workers x {args.cpus_per_cell} CPU: {ray_s:.1f} s")
    print(f"sequential / ray: {seq_s / ray_s:.2f}x; every cell scored the same: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
