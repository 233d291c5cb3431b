"""Paired statistics for comparing two runs document by document.

- ``paired_bootstrap``: percentile confidence intervals of mean differences, resampling documents with
  replacement (within each task, when the documents come from several), the same resamples for every
  quantity so that the intervals of one comparison agree with each other.
- ``mcnemar_exact``: McNemar's exact test, the two-sided binomial test of the discordant pairs
  against p = 1/2 (McNemar 1947; the exact form in Agresti, *Categorical Data Analysis*, Sec. 11.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

try:  # small products: BLAS threads only wait on each other (badly so on a busy machine)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - installed with lm-eval's scikit-learn
    threadpool_limits = None

RESAMPLES = 10_000
SEED = 0
_CHUNK = 500_000  # drawn indices held at once (4 MB), whatever the number of documents


@dataclass(frozen=True)
class Interval:
    """A mean difference and its confidence interval."""

    mean: float
    low: float
    high: float


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)), as lm-eval reports."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return (float(x.mean()), se)


def paired_bootstrap(
    diffs: np.ndarray,
    strata: Sequence[int] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = 0.95,
) -> list[Interval]:
    """Bootstrap intervals of the mean of each row of ``diffs`` (quantities x documents).

    ``strata`` gives the documents' group sizes, in column order (documents of one task are
    resampled among themselves); None is one group. Rows may hold NaN where a document lacks that
    quantity: each row's mean and resampled means skip them.
    """
    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    n = diffs.shape[1]
    strata = list(strata) if strata is not None else [n]
    assert sum(strata) == n, "strata must cover the documents"
    if n == 0:
        return [Interval(math.nan, math.nan, math.nan) for _ in diffs]
    rng = np.random.default_rng(seed)
    present = ~np.isnan(diffs)
    values = np.where(present, diffs, 0.0).T  # (documents, quantities)
    weights = present.T.astype(float)
    gaps = not present.all()
    means = np.empty((resamples, len(diffs)))
    per_chunk = max(1, _CHUNK // n)
    with threadpool_limits(1) if threadpool_limits else nullcontext():
        for start in range(0, resamples, per_chunk):
            size = min(per_chunk, resamples - start)
            counts = _counts(_draw(rng, strata, size), n)  # (size, documents): times drawn
            drawn = counts @ weights if gaps else n  # a resample holds n documents
            with np.errstate(invalid="ignore", divide="ignore"):
                means[start : start + size] = (counts @ values) / drawn
    tail = (1 - level) / 2 * 100
    out = []
    for row, ok, boot in zip(diffs, present, means.T):
        if not ok.any():
            out.append(Interval(math.nan, math.nan, math.nan))
            continue
        low, high = np.nanpercentile(boot, [tail, 100 - tail])
        out.append(Interval(float(row[ok].mean()), float(low), float(high)))
    return out


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(resamples, n) index draws -> how often each document was drawn in each resample."""
    size = idx.shape[0]
    flat = (np.arange(size)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=size * n).reshape(size, n).astype(float)


def _draw(rng: np.random.Generator, strata: list[int], size: int) -> np.ndarray:
    """``size`` resamples of document indices, each stratum drawn within itself."""
    parts, offset = [], 0
    for k in strata:
        parts.append(offset + rng.integers(0, k, size=(size, k)))
        offset += k
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts (1 when there are none)."""
    n = lost + gained
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); each next coefficient from the last, in exact integers
    for i in range(min(lost, gained)):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)  # integer division rounds once: no underflow at large n
