"""`lm-eval-routed diff A B [C ...]`: compare runs against the first, document by document.

Exit status: 0 when the runs were compared, 1 when a ``--fail-if`` bound was crossed, 2 when the
inputs cannot be compared (one line on stderr says why).
"""

from __future__ import annotations

import argparse
import operator
import re
import sys
import time
from pathlib import Path

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic
from lm_eval_routed.jobs.diff import ACCOUNTING, Comparison, Listing, TaskDiff, compare
from lm_eval_routed.jobs.readers import read_run
from lm_eval_routed.jobs.report import Format, number, render
from lm_eval_routed.jobs.runs import Run
from lm_eval_routed.jobs.stats import RESAMPLES, SEED

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
CHECKS = {
    "score_drop": "baseline score - run score",
    "score_drop_upper": "upper end of the 95% interval of the drop",
    "lost": "documents right in the baseline and wrong in the run",
    "p_value": "McNemar's exact p-value",
    "only_in_one": "documents present in one of the two runs only",
    **{f"{name}_delta": f"run - baseline mean {name}" for name in ACCOUNTING},
}


def parse_check(text: str) -> tuple[str, str, float]:
    """``score_drop>0.02`` -> (name, operator, bound); anything else is one clear error."""
    match = re.fullmatch(r"\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", text)
    if not match or match.group(1) not in CHECKS:
        raise ConfigError(
            f"--fail-if {text!r}: write NAME>NUMBER (or >=, <, <=) with NAME one of: "
            + ", ".join(CHECKS)
        )
    try:
        bound = float(match.group(3))
    except ValueError:
        raise ConfigError(f"--fail-if {text!r}: {match.group(3)!r} is not a number") from None
    return match.group(1), match.group(2), bound


def check_value(d: TaskDiff, name: str) -> float | None:
    """The quantity a ``--fail-if`` check reads, for one task (or overall); None if not defined."""
    if name == "score_drop":
        return d.base[0] - d.other[0] if d.n else None
    if name == "score_drop_upper":
        return -d.diff.low if d.diff else None
    if name == "lost":
        return float(len(d.lost))
    if name == "p_value":
        return d.p_value
    if name == "only_in_one":
        return float(len(d.only_base) + len(d.only_other))
    field = name.removesuffix("_delta")
    return next((a.diff.mean for a in d.accounting if a.field == field), None)


def failures(comparisons: list[Comparison], checks: list[tuple[str, str, float]]) -> list[str]:
    """One line per (comparison, task or overall, check) whose bound was crossed."""
    out = []
    for c in comparisons:
        for d in [*c.tasks, *([c.overall] if c.overall else [])]:
            for name, op, bound in checks:
                value = check_value(d, name)
                if value is not None and value == value and _OPS[op](value, bound):
                    out.append(
                        f"fail-if {name}{op}{bound:g}: {c.other!r} vs {c.base!r}, {d.task}: "
                        f"{name} = {number(value)}"
                    )
    return out


def read_runs(
    paths: list[str], metric: str | None, labels: str | None, tasks: list[str]
) -> list[Run]:
    """Every run, labelled (``--labels`` or their own names, made distinct), limited to ``tasks``."""
    names = [x.strip() for x in labels.split(",")] if labels else []
    if names and len(names) != len(paths):
        raise ConfigError(f"--labels names {len(names)} runs; {len(paths)} were given")
    runs = []
    for i, path in enumerate(paths):
        run = read_run(path, metric, names[i] if names else None)
        if tasks:
            missing = [t for t in tasks if t not in run.tasks]
            if missing:
                raise ConfigError(
                    f"{path} has no task {missing[0]!r}; it has: {', '.join(sorted(run.tasks))}"
                )
            run.tasks = {t: run.tasks[t] for t in tasks}
        taken = {r.label for r in runs}
        if run.label in taken:
            run.label = f"{run.label} #{i + 1}"
        runs.append(run)
    return runs


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    ap = argparse.ArgumentParser(
        prog="lm-eval-routed diff",
        description="Compare runs document by document against the first (the baseline).",
        epilog="--fail-if names: " + "; ".join(f"{k}: {v}" for k, v in CHECKS.items()),
    )
    ap.add_argument(
        "runs", nargs="+", help="lm-eval output folders or files, sweep cells, EvalPlus samples"
    )
    ap.add_argument(
        "--metric", help="the metric to compare (name or name,filter; default: each task's first)"
    )
    ap.add_argument(
        "--task", action="append", default=[], help="compare only this task (repeatable)"
    )
    show = ap.add_mutually_exclusive_group()
    show.add_argument("--samples", action="store_true", help="list every sample's first divergence")
    show.add_argument("--flips", action="store_true", help="list the flipped samples' divergences")
    ap.add_argument("--format", choices=[f.value for f in Format], default="table")
    ap.add_argument("--out", type=Path, help="write the report here instead of stdout")
    ap.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="CHECK",
        help="exit 1 when a task or the overall crosses it, e.g. 'score_drop>0.02' (repeatable)",
    )
    ap.add_argument("--labels", help="comma-separated names for the runs, in order")
    ap.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=SEED, help="bootstrap seed")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lm-eval-routed diff``."""
    args = build_parser().parse_args(argv)
    try:
        if len(args.runs) < 2:
            raise ConfigError(
                "give at least two runs: the baseline first, then the runs to compare"
            )
        if args.resamples < 100:
            raise ConfigError(
                f"--resamples {args.resamples}: use at least 100 (default {RESAMPLES})"
            )
        checks = [parse_check(text) for text in args.fail_if]
        start = time.perf_counter()
        runs = read_runs(args.runs, args.metric, args.labels, args.task)
        mode = Listing.ALL if args.samples else Listing.FLIPS if args.flips else None
        comparisons = [compare(runs[0], run, mode, args.resamples, args.seed) for run in runs[1:]]
    except ConfigError as err:
        print(f"lm-eval-routed diff: {err}", file=sys.stderr)
        return 2
    text = render(comparisons, Format(args.format))
    if args.out:
        write_atomic(args.out, text)
        print(f"wrote {args.out} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    failed = failures(comparisons, checks)
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0
