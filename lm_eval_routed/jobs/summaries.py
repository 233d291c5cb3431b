"""A cell summary (``OUT/runs/<label>/<task>.json``): the settings it records, the accounting means it
holds, and reading one back. Light on imports: the leaderboard reads summaries without loading torch."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from lm_eval_routed.config import RoutedConfig

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

# the settings that decide a configuration's scores and costs: a cell scored under others is not it
SETTINGS = (
    *("slm", "llm", "router", "threshold", "p", "router_ckpt", "gamma", "batch_size", "seed"),
    *("dtype", "slm_dtype", "llm_min_batch", "guess_ahead", "llm_lookahead", "schedule"),
    *("prepack", "engine"),  # the kernels a cell's latency was measured on
    *("params_slm_nominal", "params_llm_nominal"),
)


def config_dict(cfg: RoutedConfig) -> dict[str, Any]:
    """The settings a summary records of its configuration."""
    return {k: getattr(cfg, k) for k in SETTINGS}


def summarize(records: list[dict]) -> dict[str, float | None]:
    """Mean of each accounting field over generations (R2R's run figure for activated params);
    None for a field some generation lacks (the nominal figure of a run given no nominal sizes)."""
    if not records:
        return {}
    values = {f: [r.get(f) for r in records] for f in SUMMARY_FIELDS}
    return {f: None if None in v else statistics.fmean(v) for f, v in values.items()}


def read_summary(path: Path) -> dict[str, Any] | None:
    """A cell's summary, or None when the file is not a whole one."""
    try:
        stored = json.loads(path.read_text())
    except (ValueError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    whole = isinstance(stored, dict) and {"config", "metrics", "accounting"} <= set(stored)
    return stored if whole else None
