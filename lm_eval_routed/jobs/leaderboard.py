"""Leaderboard: sweep summaries -> Markdown and CSV tables, a Pareto plot and an HTML page.

The plot is drawn by ``pareto.py`` and the page by ``leaderboard_html.py``; this module builds the rows
all of them share.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic

COLUMNS = (
    "config",
    "task",
    "accuracy",
    "stderr",
    "llm_share",
    "activated_params",
    "activated_params_charged",
    "latency_s",
    "modeled_latency_s",
    "speedup_vs_llm_only",
    "modeled_speedup_vs_llm_only",
    "n",
    "latency_b1_s",
    "speedup_b1_vs_llm_only",
)
NOMINAL = (
    "activated_params_nominal"  # a column only when some configuration was given nominal sizes
)


def primary_metric(
    metrics: dict[str, Any], preferred: str | None = None
) -> tuple[str, float, float]:
    """(name, value, stderr) of the task's main metric: ``preferred`` or the first numeric one."""
    for key, value in metrics.items():
        name, comma, _filter = key.partition(",")  # lm-eval keys metrics as "metric,filter"
        if not comma or name.endswith("_stderr") or not isinstance(value, int | float):
            continue
        if preferred and name != preferred:
            continue
        stderr = metrics.get(key.replace(name, f"{name}_stderr", 1))
        return (
            name,
            float(value),
            float(stderr) if isinstance(stderr, int | float) else float("nan"),
        )
    if preferred:
        names = sorted({k.partition(",")[0] for k in metrics if "," in k and "_stderr" not in k})
        raise ConfigError(f"metric {preferred!r} is not one of this task's: {', '.join(names)}")
    raise ValueError(f"no numeric metric in {sorted(metrics)}")


def build_rows(
    summaries: list[dict[str, Any]],
    metric: str | None = None,
    batch1: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (config, task); speedups are against the llm-only row of the same task.

    ``batch1`` holds cells of the same configurations (same labels) scored at batch size 1, often on a
    subset: their mean latency per sample is the row's ``latency_b1_s``, beside the batched figures.
    """
    base = _llm_only(summaries)
    b1 = {(s["label"], s["task"]): s["accounting"] for s in batch1 or []}
    b1_base = _llm_only(batch1 or [])
    rows = []
    for s in summaries:
        _, value, stderr = primary_metric(s["metrics"], metric)
        acc, ref = s["accounting"], base.get(s["task"])
        rows.append(
            {
                "config": s["label"],
                "task": s["task"],
                "accuracy": value,
                "stderr": stderr,
                "llm_share": acc.get("llm_share"),
                "activated_params": acc.get("activated_params"),
                "activated_params_charged": acc.get("activated_params_charged"),
                NOMINAL: acc.get(NOMINAL),
                "latency_s": acc.get("latency_s"),
                "modeled_latency_s": acc.get("modeled_latency_s"),
                "speedup_vs_llm_only": _speedup(ref, acc, "latency_s"),
                "modeled_speedup_vs_llm_only": _speedup(ref, acc, "modeled_latency_s"),
                "n": s["n_samples"],
                "latency_b1_s": (b1.get((s["label"], s["task"])) or {}).get("latency_s"),
                "speedup_b1_vs_llm_only": _speedup(
                    b1_base.get(s["task"]), b1.get((s["label"], s["task"])) or {}, "latency_s"
                ),
                "model_args": model_args(s["config"]),
                # set by the demo on a random control: the label of the router it is matched to
                "control_of": s.get("control_of"),
            }
        )
    return sorted(rows, key=lambda r: (r["task"], r["activated_params"] or 0))


def _llm_only(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each task's llm-only accounting: the reference every speedup is taken against."""
    return {
        s["task"]: s["accounting"] for s in summaries if s["config"].get("router") == "llm-only"
    }


def _speedup(ref: dict | None, acc: dict, key: str) -> float | None:
    """llm-only's ``key`` over this row's; None where either is missing or zero (costs pinned to
    ``0:0`` model no latency, so there is no speed-up to state)."""
    if not ref or not acc or not ref.get(key) or not acc.get(key):
        return None
    return ref[key] / acc[key]


def model_args(config: dict[str, Any]) -> str:
    """A cell's configuration as an ``--model_args`` string (unset keys left out)."""
    return ",".join(f"{k}={v}" for k, v in config.items() if v is not None)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.startswith("activated"):
        return f"{value / 1e6:.1f}M"
    if key in ("accuracy", "stderr", "llm_share"):
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.3f}" if "latency" in key else f"{value:.2f}x"
    return str(value)


def columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """COLUMNS, with the nominal activated parameters after the exact ones when any row has them."""
    if not any(r.get(NOMINAL) is not None for r in rows):
        return COLUMNS
    at = COLUMNS.index("activated_params_charged") + 1
    return (*COLUMNS[:at], NOMINAL, *COLUMNS[at:])


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(k, r.get(k)) for k in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Raw numbers, one row per (config, task), and each configuration's model_args."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*columns(rows), "model_args"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_leaderboard(
    summaries: list[dict[str, Any]],
    out: Path,
    metric: str | None = None,
    batch1: list[dict[str, Any]] | None = None,
) -> str:
    """Write leaderboard.md, .csv, .html and pareto.png into ``out``; return the Markdown
    (``batch1``: as ``build_rows``')."""
    from lm_eval_routed.jobs.leaderboard_html import render_html
    from lm_eval_routed.jobs.pareto import entries, pareto_png

    rows = build_rows(summaries, metric, batch1)
    text = to_markdown(rows)
    png = pareto_png(rows)
    numbers = {label: e.number for label, e in entries(rows).items()}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "leaderboard.md", text)
    write_atomic(out / "leaderboard.csv", to_csv(rows))
    write_atomic(out / "pareto.png", png)
    write_atomic(out / "leaderboard.html", render_html(rows, _fmt, numbers, png))
    return text
