"""`lm-eval-routed leaderboard RUN_OR_SWEEP...`: one leaderboard over many sweeps and lm-eval runs.

Each argument is a sweep's output folder (every finished cell under ``runs/``), one cell folder or
summary of a sweep, or an lm-eval ``--output_path`` folder (every ``results_*.json`` under it) or one
results file. Every (configuration, task) found becomes a row in the same ``leaderboard.md``,
``.csv``, ``.html`` and ``pareto.png`` a sweep writes. A configuration met twice on the same task
(the same sweep given twice, a cell copied into another sweep, a sweep and the lm-eval run it
repeats) is one row, the first found; one label met under different settings (another pair,
threshold, ``limit``, ...) is refused in one line: its rows would not be one configuration. A sweep
folder's batch-1 cells (``OUT/batch1/``, the demo's) fill the ``latency_b1_s`` column.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_routed.config_args import load_config, parse_arg_string
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.readers import lm_eval_label, read_run
from lm_eval_routed.jobs.runs import read_json
from lm_eval_routed.jobs.summaries import config_dict, read_summary, summarize

log = logging.getLogger(__name__)

ACCEPTED = (
    "give a sweep's output folder, a sweep cell folder (OUT/runs/<label>) or summary, "
    "or an lm-eval output folder or its results_*.json"
)


@dataclass(frozen=True)
class Found:
    """One (configuration, task) result, where it was read, and the settings that made it."""

    summary: dict[str, Any]  # in the shape of a sweep cell's summary (leaderboard.build_rows')
    settings: dict[str, Any]
    source: Path


def merge_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """The summaries of every run under ``paths``, each (label, task) once; a label met under
    different settings is one ``ConfigError``."""
    first: dict[str, Found] = {}
    rows: dict[tuple[str, str], Found] = {}
    for path in paths:
        for found in find(path):
            label, task = found.summary["label"], found.summary["task"]
            _check_same(first.setdefault(label, found), found)
            if (label, task) in rows:
                log.info("%s on %s: also in %s, counted once", label, task, found.source)
                continue
            rows[label, task] = found
    return [f.summary for f in rows.values()]


def _check_same(a: Found, b: Found) -> None:
    """Refuse two results of one label whose settings differ (keys only one records are skipped)."""
    for key in sorted(set(a.settings) & set(b.settings)):
        if a.settings[key] != b.settings[key]:
            raise ConfigError(
                f"{a.summary['label']!r} ran with {key}={a.settings[key]!r} in {a.source} but "
                f"{key}={b.settings[key]!r} in {b.source}; give one another name= or leave it out"
            )


def find(path: Path) -> list[Found]:
    """Every result under one argument, in a stable order."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist; {ACCEPTED}")
    if path.is_file():
        if re.fullmatch(r"results_.+\.json", path.name):
            return _lm_eval(path)
        cell = _cell(path)
        if cell is None:
            raise ConfigError(
                f"{path} is neither a sweep cell's summary nor lm-eval results; {ACCEPTED}"
            )
        return [cell]
    if (path / "runs").is_dir():  # a sweep's output folder
        cells = sorted((path / "runs").glob("*/*.json"))
    else:  # a cell folder
        cells = sorted(p for p in path.glob("*.json") if p.with_suffix(".samples.jsonl").is_file())
    found = [c for c in map(_cell, cells) if c is not None]
    if not cells:
        found = [f for results in sorted(path.rglob("results_*.json")) for f in _lm_eval(results)]
    if not found:
        raise ConfigError(f"{path} holds no finished sweep cell nor lm-eval results; {ACCEPTED}")
    return found


def _cell(path: Path) -> Found | None:
    summary = read_summary(path)
    if summary is None or not {"label", "task"} <= set(summary):
        log.warning("%s is not a whole cell summary (a cell still running?); left out", path)
        return None
    return Found(summary, {**summary["config"], "limit": summary.get("limit")}, path)


def _lm_eval(results: Path) -> list[Found]:
    """One result per task of an lm-eval results file (groups left out: their tasks are rows)."""
    data = read_json(results)
    config = data.get("config") or {}
    settings = {**_settings(config), "limit": config.get("limit")}
    label = lm_eval_label(data, results.parent)
    date = results.name.removeprefix("results_").removesuffix(".json")
    logged = any(results.parent.glob(f"samples_*_{date}.jsonl"))
    run = read_run(results) if logged else None  # records live in the sample logs
    tasks = data.get("configs") or data.get("results") or {}
    out = []
    for task in sorted(tasks):
        metrics = (data.get("results") or {}).get(task)
        if metrics is None:
            continue
        docs = run.tasks[task].docs.values() if run and task in run.tasks else []
        records = [g.record for d in docs for g in d.generations if g.record is not None]
        n = ((data.get("n-samples") or {}).get(task) or {}).get("effective", len(docs))
        summary = {
            "label": label,
            "task": task,
            "config": {k: v for k, v in settings.items() if k != "limit"},
            "metrics": metrics,
            "n_samples": n,
            "limit": settings["limit"],
            "accounting": summarize(records),
        }
        out.append(Found(summary, settings, results))
    return out


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """A routed run's settings as a sweep cell records them; another model's name and arguments."""
    args = config.get("model_args")
    if config.get("model") == "routed":
        try:
            given = parse_arg_string(args) if isinstance(args, str) else dict(args or {})
            settings = config_dict(load_config({k: v for k, v in given.items() if k != "runtime"}))
        except ConfigError:
            return {"model": "routed", "model_args": args}
        seed = (config.get("routed") or {}).get("seed")  # the seed it ran with, wherever set
        return {**settings, "seed": seed if seed is not None else settings["seed"]}
    return {"model": config.get("model"), "model_args": args}


def main(argv: list[str]) -> int:
    """Write one leaderboard over the runs and sweeps given."""
    from lm_eval_routed.jobs.leaderboard import write_leaderboard
    from lm_eval_routed.jobs.sweep_cli import job_logging

    ap = argparse.ArgumentParser(
        prog="lm-eval-routed leaderboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_SWEEP")
    ap.add_argument("--out", type=Path, default=Path("runs/leaderboard"), help="output folder")
    ap.add_argument("--metric", help="the metric to rank by (default: each task's first)")
    args = ap.parse_args(argv)
    job_logging()
    try:
        summaries = merge_runs(args.runs)
        singles = [p / "batch1" for p in args.runs if (p / "batch1" / "runs").is_dir()]
        batch1 = merge_runs(singles) if singles else None
        board = write_leaderboard(summaries, args.out, metric=args.metric, batch1=batch1)
    except ConfigError as err:
        print(f"lm-eval-routed leaderboard: {err}", file=sys.stderr)
        return 2
    print(board)
    print(
        f"leaderboard.md, leaderboard.csv, leaderboard.html and pareto.png written to {args.out}/"
    )
    return 0
