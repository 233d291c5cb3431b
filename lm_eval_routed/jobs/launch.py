"""What every launcher of a sweep's cells shares: their names, a failed cell in one line, and the
progress line (cells done, running and failed of those set out to run, and the time left at the pace
finished cells have set). Light on imports: the command line reads it before any model library loads."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lm_eval_routed.errors import ConfigError

log = logging.getLogger(__name__)


class Launcher(str, Enum):
    """What runs a sweep's cells."""

    SEQUENTIAL = "sequential"  # this process, one cell after another
    RAY = "ray"  # one Ray task per cell, on whatever cluster ray.init reaches


@dataclass(frozen=True)
class CellFailure:
    """A cell that stopped without its files, and why, in one line."""

    tag: str
    cause: str


class SweepIncomplete(Exception):
    """Some cells failed; the others are on disk and their summaries are kept here."""

    def __init__(self, summaries: list[dict[str, Any]], failures: list[CellFailure], total: int):
        self.summaries, self.failures = summaries, failures
        super().__init__(
            f"{len(failures)} of {total} cells failed; run the same command again to retry only "
            "those: " + "; ".join(f"{f.tag}: {f.cause}" for f in failures)
        )


def one_line(err: BaseException) -> str:
    """An exception as one line: our own errors' message, else its type and first line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, ConfigError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass
class Progress:
    """Counts of a sweep's cells to run; ``tag`` names a cell (``<config-slug>/<task>``)."""

    total: int
    clock: Callable[[], float] = time.monotonic
    running: set[str] = field(default_factory=set)
    done: int = 0
    failed: int = 0
    ended: set[str] = field(default_factory=set)  # a start heard after the end is ignored (Ray)
    began: float = 0.0

    def __post_init__(self) -> None:
        self.began = self.clock()

    def start(self, tag: str) -> None:
        """A cell began running."""
        if tag in self.ended or tag in self.running:
            return
        self.running.add(tag)
        log.info("%s %s: started", self.line(), tag)

    def finish(self, tag: str) -> None:
        """A cell's files are on disk."""
        self._end(tag)
        self.done += 1
        log.info("%s %s: done", self.line(), tag)

    def fail(self, tag: str, cause: str) -> None:
        """A cell stopped without its files; ``cause`` is one line."""
        self._end(tag)
        self.failed += 1
        log.warning("%s %s: FAILED: %s", self.line(), tag, cause)

    def _end(self, tag: str) -> None:
        self.running.discard(tag)
        self.ended.add(tag)

    def time_left(self) -> float | None:
        """Seconds until the cells not yet ended are done, at the rate cells have been finishing
        (so parallel workers are counted in); None before the first cell is done."""
        if not self.done:
            return None
        rate = self.done / max(self.clock() - self.began, 1e-9)
        return (self.total - self.done - self.failed) / rate

    def line(self) -> str:
        """``[3/8 done, 2 running, 1 failed, ~4m10s left]``."""
        left = self.time_left()
        when = "time left unknown" if left is None else f"~{duration(left)} left"
        return (
            f"[{self.done}/{self.total} done, {len(self.running)} running, "
            f"{self.failed} failed, {when}]"
        )


def duration(seconds: float) -> str:
    """``45s``, ``4m10s``, ``2h05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
