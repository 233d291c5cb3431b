"""`lm-eval-routed sweep MATRIX.yaml`: score a matrix of routed configurations x tasks, then a leaderboard.

The matrix file names the cells; everything else is ``run_sweep``'s (resumable, one model load per
pair and dtype) and ``write_leaderboard``'s (tables and a Pareto plot):

    base:                   # model_args every configuration shares (optional)
      config: demo
      batch_size: 8
    configs:                # one mapping of model_args per configuration
      - {router: llm-only}
      - {router: random, p: 0.2}
      - {router: r2r, router_ckpt: router_ckpts/demo-r2r, threshold: 0.5, name: r2r t=0.5}
    tasks: [routed_demo]    # lm-eval task names or task YAML paths
    include_path: my_tasks/ # optional: a folder of more task YAMLs
    metric: exact_match     # optional: the leaderboard's metric (default: each task's first)

Before any model loads, every configuration is built and every path the matrix names is checked
(include_path, task YAML paths, config files, router checkpoints, model folders, --out).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.launch import Launcher, SweepIncomplete
from lm_eval_routed.jobs.matrix import read_matrix


def positive_int(text: str) -> int:
    """argparse type: a count of 1 or more."""
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def job_logging() -> None:
    """Progress lines from our jobs; lm-eval's and the loaders' chatter only from warnings up."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lm_eval", "transformers", "httpx", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Tasks that read bundled data through a custom_dataset function (the demo's, ours) make lm-eval
    # warn about that function's kwargs at every load: advice for task authors, twice per cell here.
    logging.getLogger("lm_eval.api.task").addFilter(
        lambda record: "Custom kwargs can be passed" not in record.getMessage()
    )


def main(argv: list[str]) -> int:
    """Run every cell of the matrix not already on disk and write the leaderboard."""
    ap = argparse.ArgumentParser(
        prog="lm-eval-routed sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("matrix", type=Path, help="YAML file: base, configs, tasks (see above)")
    ap.add_argument("--out", type=Path, help="output folder (default: runs/<matrix file name>)")
    ap.add_argument("--limit", type=positive_int, help="score only the first N docs of each task")
    ap.add_argument(
        "--launcher",
        choices=[x.value for x in Launcher],
        default=Launcher.SEQUENTIAL.value,
        help="sequential: this process, one cell after another (default); ray: each cell one Ray "
        "task, on a local cluster or the one at --address (pip install 'lm-eval-routed[ray]')",
    )
    ap.add_argument("--address", help="ray: an existing cluster's address (e.g. auto, HOST:6379)")
    ap.add_argument(
        "--cpus-per-cell", type=positive_int, help="ray: CPUs each cell asks for (default 1)"
    )
    args = ap.parse_args(argv)
    job_logging()
    launcher = Launcher(args.launcher)
    if launcher is not Launcher.RAY and (args.address or args.cpus_per_cell):
        flag = "--address" if args.address else "--cpus-per-cell"
        print(f"lm-eval-routed sweep: {flag} applies to --launcher ray only", file=sys.stderr)
        return 2

    from lm_eval_routed.jobs.leaderboard import write_leaderboard
    from lm_eval_routed.jobs.sweep import run_sweep
    from lm_eval_routed.jobs.sweep_ray import RayOptions

    out = args.out or Path("runs") / args.matrix.stem
    try:
        matrix = read_matrix(args.matrix)
        summaries = run_sweep(
            matrix["configs"],
            matrix["tasks"],
            out,
            base=matrix["base"],
            limit=args.limit,
            include_path=matrix.get("include_path"),
            source=args.matrix,
            launcher=launcher,
            ray=RayOptions(args.address, args.cpus_per_cell or 1),
        )
        board = write_leaderboard(summaries, out, metric=matrix.get("metric"))
    except SweepIncomplete as err:
        if err.summaries:  # the cells that finished still make a (partial) leaderboard
            write_leaderboard(err.summaries, out, metric=matrix.get("metric"))
        print(f"lm-eval-routed sweep: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:
        print(f"lm-eval-routed sweep: {err}", file=sys.stderr)
        return 2
    print(board)
    print(f"leaderboard.md, leaderboard.csv, leaderboard.html and pareto.png written to {out}/")
    return 0
