"""`lm-eval-routed demo`: score routers beside baselines on the offline demo pair, then a leaderboard.

Runs every configuration below on both demo tasks with the demo pair (SmolLM2-135M-Instruct as the LLM,
a distilled student as the SLM), all offline: ``routed_demo`` (short answers, prefill-bound) and
``routed_demo_cot`` (worked arithmetic, decode-bound, where routing saves most of the LLM's steps). It
writes ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.html`` and ``pareto.png`` to the output
folder. Each trained router shipped in ``router_ckpts/`` also gets its control on each task: random
routing at the LLM share the router reached there (``matched_control``), so "does it beat random at
equal cost?" is one glance at the table. The papers' speedups are single-request latencies, so the
decode-bound task is also scored at batch size 1 on its first ``LATENCY_B1_DOCS`` problems, every
configuration again as its own cells under ``OUT/batch1/``; their mean latency per sample is the
leaderboard's ``latency_b1_s``. Finished cells are kept: re-running resumes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.launch import SweepIncomplete
from lm_eval_routed.jobs.leaderboard import write_leaderboard
from lm_eval_routed.jobs.sweep import run_sweep
from lm_eval_routed.jobs.sweep_cli import job_logging, positive_int
from lm_eval_routed.paths import router_ckpts_dir

DEMO_TASKS = ("routed_demo", "routed_demo_cot")
# the decode-bound task, where single-request latency is what the papers' speedups measure
LATENCY_B1_TASK = "routed_demo_cot"
# batch 1 costs about as much per problem as batch 8 costs per 8 (2 CPU cores): a third of the
# task keeps the demo's wall time within a few minutes of the batched passes
LATENCY_B1_DOCS = 16

# the shipped demo routers (router_ckpts/demo-<kind>), each scored beside its share-matched control
TRAINED = ("r2r", "citer", "rstitch-plus")

# baselines first, then routers from cheapest to dearest knob
DEMO_CONFIGS: list[dict] = [
    {"router": "slm-only"},
    {"router": "llm-only"},
    {"router": "random", "p": 0.15},
    {"router": "random", "p": 0.4},
    # R-Stitch's thresholds: a front R-Stitch+ is read against; 0.02 is the tau the demo's
    # rstitch-plus was trained under (the policy is asked only where this entropy rule would switch)
    {"router": "entropy", "threshold": 0.02},
    {"router": "entropy", "threshold": 0.05},
    {"router": "entropy", "threshold": 0.15},
    {"router": "entropy", "threshold": 0.3},
    {"router": "entropy-token", "threshold": 1.5},
    {"router": "speculative"},
]


def demo_configs() -> list[dict]:
    """The fixed list plus any trained demo routers shipped in router_ckpts/."""
    configs = list(DEMO_CONFIGS)
    for kind in TRAINED:
        folder = router_ckpts_dir() / f"demo-{kind}"
        if (folder / "model.safetensors").is_file():
            configs.append(
                {"router": kind, "router_ckpt": str(folder), "name": f"{kind} (demo ckpt)"}
            )
    return configs


@dataclass(frozen=True)
class DemoPass:
    """One sweep of the demo: its configurations on its tasks, at one batch size, into one folder."""

    configs: list[dict]
    tasks: list[str]
    out: Path
    base: dict
    limit: int | None


def demo_passes(out: Path, tasks: list[str], limit: int | None, batch_size: int) -> list[DemoPass]:
    """The batched pass over ``tasks``, then, where the decode-bound task is among them, the same
    configurations on it at batch size 1 on its first ``LATENCY_B1_DOCS`` problems (``OUT/batch1``)."""
    base = {"config": "demo", "batch_size": batch_size}
    passes = [DemoPass(demo_configs(), tasks, out, base, limit)]
    if LATENCY_B1_TASK in tasks:
        subset = min(limit or LATENCY_B1_DOCS, LATENCY_B1_DOCS)
        b1 = {**base, "batch_size": 1}
        passes.append(DemoPass(demo_configs(), [LATENCY_B1_TASK], out / "batch1", b1, subset))
    return passes


def matched_control(router: dict, run) -> dict:
    """Random routing at the LLM share ``router`` reached: the control it has to beat at equal cost.

    The first try uses p = that share. Random's realized share drifts from p on short answers (who
    writes a token changes when the answer stops, and shares are averaged per sample), so a try that
    misses by more than 0.03 is followed by one with p scaled by target / realized. ``run(config)``
    scores one configuration and returns its summary.
    """
    target = router["accounting"]["llm_share"]

    def at(p: float) -> dict:
        name = f"random p={p:g} (share-matched to {router['label']})"
        return run({"router": "random", "p": p, "name": name})

    p = round(target, 2)
    control = at(p)
    realized = control["accounting"]["llm_share"]
    if abs(realized - target) <= 0.03 or realized == 0:
        return control
    return at(round(min(1.0, p * target / realized), 2))


def main(argv: list[str]) -> int:
    """Run the demo sweep and print the leaderboard."""
    ap = argparse.ArgumentParser(prog="lm-eval-routed demo", description=__doc__)
    ap.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    ap.add_argument("--limit", type=positive_int, default=None, help="score only the first N docs")
    ap.add_argument("--batch-size", type=positive_int, default=8)
    ap.add_argument(
        "--tasks",
        "--task",
        default=",".join(DEMO_TASKS),
        help=f"comma-separated lm-eval tasks (default: {','.join(DEMO_TASKS)})",
    )
    args = ap.parse_args(argv)
    job_logging()

    out = Path(args.out)
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    batched, *batch1_passes = demo_passes(out, tasks, args.limit, args.batch_size)

    def run(configs: list[dict], on: list[str]) -> list[dict]:
        return run_sweep(configs, on, out, base=batched.base, limit=args.limit)

    try:
        summaries = run(batched.configs, batched.tasks)
        routers = [s for s in summaries if s["config"]["router"] in TRAINED and s["accounting"]]
        for router in routers:  # each control on its router's task only: shares differ by task
            control = matched_control(router, lambda cfg, t=router["task"]: run([cfg], [t])[0])
            summaries.append({**control, "control_of": router["label"]})
        batch1 = [
            s for p in batch1_passes for s in run_sweep(p.configs, p.tasks, p.out, p.base, p.limit)
        ]
    except SweepIncomplete as err:
        print(f"lm-eval-routed demo: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:
        print(f"lm-eval-routed demo: {err}", file=sys.stderr)
        return 2
    print(write_leaderboard(summaries, out, batch1=batch1))
    print(f"leaderboard.md, leaderboard.csv, leaderboard.html and pareto.png written to {out}/")
    return 0
