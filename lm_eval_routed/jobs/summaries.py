"""A cell summary (``OUT/runs/<label>/<task>.json``): the settings it records, the accounting means it
holds, and reading one back. Light on imports: the leaderboard reads summaries without loading torch."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from lm_eval_routed.config import Affects, RoutedConfig, effects

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

# what a cell records of its configuration and compares on resume: what changes its scores, and
# what changes its speed on the machine it ran on (where the weights were placed is in its run
# info); not its name, which is the cell's folder already
SETTINGS = tuple(
    key
    for key, affects in effects().items()
    if key != "name"
    and (Affects.OUTPUT in affects or (Affects.SPEED in affects and Affects.LOADING not in affects))
)


def config_dict(cfg: RoutedConfig) -> dict[str, Any]:
    """The settings a summary records of its configuration (JSON's types: a cost pair is a list)."""
    return json.loads(json.dumps({k: getattr(cfg, k) for k in SETTINGS}))


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
