"""Compare runs document by document: paired score differences, flips, accounting deltas, divergences.

``compare(base, other)`` pairs the documents of each task the two runs share (by doc id and, for text,
by repeat), refuses runs made on different prompts, and reports per task and overall: each run's
score, the paired difference with a bootstrap interval, McNemar's exact p-value where the metric is
binary, the documents that flipped each way, and the accounting deltas (stats.py). The command line
lives in ``diff_cli.py``, the tables in ``report.py``.
"""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.runs import Doc, DocId, Generation, Run, TaskRun, doc_order
from lm_eval_routed.jobs.stats import (
    RESAMPLES,
    SEED,
    Interval,
    mcnemar_exact,
    mean_stderr,
    paired_bootstrap,
)

# accounting fields compared (each doc's mean over its repeats); those a run lacks are skipped
ACCOUNTING = (
    "llm_share",
    "activated_params",
    "activated_params_charged",
    "activated_params_nominal",
    "latency_s",
    "modeled_latency_s",
    "switches",
    "tokens",
)
CONTEXT = 30  # characters shown on each side of a divergence


class Listing(str, Enum):
    """Which documents get their per-sample divergences listed."""

    FLIPS = "flips"
    ALL = "all"


class Writer(str, Enum):
    """Who wrote the token at a divergence."""

    LLM = "llm"
    SLM = "slm"
    END = "end"  # the text ended there
    UNKNOWN = "?"  # no record, or no token boundaries in it


@dataclass(frozen=True)
class Delta:
    """One accounting field over the documents both runs have it for: means and paired difference."""

    field: str
    n: int
    base: float
    other: float
    diff: Interval


@dataclass(frozen=True)
class Divergence:
    """Where two responses to one document (one repeat) part, and who wrote the token there."""

    task: str
    doc_id: DocId
    repeat: int
    char: int | None  # first differing character; None: the same text
    tokens: tuple[int | None, int | None]  # token holding that character in each run
    writers: tuple[str, str]  # Writer values
    common: str  # the shared text just before it
    rest: tuple[str, str]  # each run's text from it on
    answers: tuple[str | None, str | None]
    scores: tuple[float | None, float | None]


@dataclass
class TaskDiff:
    """One task (or all of them, ``task == "overall"``) compared between a baseline and a run."""

    task: str
    metric: str | None
    n: int  # documents scored in both runs
    base: tuple[float, float]  # mean, stderr
    other: tuple[float, float]
    diff: Interval | None
    binary: bool
    p_value: float | None  # exact McNemar, binary metrics only
    lost: list[DocId]  # right in the baseline, wrong in the run (lower, for non-binary metrics)
    gained: list[DocId]
    only_base: list[DocId]
    only_other: list[DocId]
    accounting: list[Delta] = field(default_factory=list)


@dataclass
class Comparison:
    """A run against the baseline: per task, overall, and the per-sample divergences asked for."""

    base: str
    other: str
    tasks: list[TaskDiff]
    overall: TaskDiff | None
    only_base_tasks: list[str]
    only_other_tasks: list[str]
    samples: list[Divergence]
    notes: list[str] = field(default_factory=list)  # what to bear in mind reading the figures


@dataclass
class _Paired:
    """One task's paired documents as arrays (the bootstrap's input)."""

    ids: list[DocId]
    scores: np.ndarray  # (2, n), NaN where a run has no score
    fields: dict[str, np.ndarray]  # field -> (2, n), NaN where a run has no record


def compare(
    base: Run,
    other: Run,
    samples: Listing | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    """``other`` against ``base``, with the per-sample divergences ``samples`` asks for."""
    common = sorted(set(base.tasks) & set(other.tasks))
    if not common:
        raise ConfigError(
            f"{base.label!r} and {other.label!r} share no task "
            f"({', '.join(sorted(base.tasks))} vs {', '.join(sorted(other.tasks))})"
        )
    paired, diffs, divergences = [], [], []
    for task in common:
        a, b = base.tasks[task], other.tasks[task]
        check_same_prompts(a, b, base.label, other.label)
        pair = _pair(a, b)
        paired.append(pair)
        diff = _task_diff(task, a.metric or b.metric, pair, [len(pair.ids)], resamples, seed)
        diff.only_base = sorted(set(a.docs) - set(b.docs), key=doc_order)
        diff.only_other = sorted(set(b.docs) - set(a.docs), key=doc_order)
        diffs.append(diff)
        if samples:
            flipped = set(diffs[-1].lost) | set(diffs[-1].gained)
            for doc_id in pair.ids:
                if samples is Listing.ALL or doc_id in flipped:
                    divergences += diverge(task, a.docs[doc_id], b.docs[doc_id])
    overall = _overall(diffs, paired, resamples, seed) if len(diffs) > 1 else None
    return Comparison(
        base.label,
        other.label,
        diffs,
        overall,
        sorted(set(base.tasks) - set(other.tasks)),
        sorted(set(other.tasks) - set(base.tasks)),
        divergences,
        _notes(base, other),
    )


def _notes(base: Run, other: Run) -> list[str]:
    """Run settings that make some deltas mean less than they seem."""
    notes = []
    costs = [run.info.get("cost_model") for run in (base, other)]
    if all(costs) and costs[0] != costs[1]:
        notes.append(
            "modeled_latency_s: the runs priced their forwards with different cost models "
            "(measured at each start); pin cost_slm and cost_llm to compare it"
        )
    devices = [run.info.get("device") for run in (base, other)]
    if all(devices) and devices[0] != devices[1]:
        notes.append(f"latency_s: the runs ran on {devices[0]} and {devices[1]}")
    return notes


def check_same_prompts(a: TaskRun, b: TaskRun, name_a: str, name_b: str) -> None:
    """Refuse runs made on other prompts (few-shot count, template, dataset version)."""
    if a.dataset_hash and b.dataset_hash and a.dataset_hash != b.dataset_hash:
        raise ConfigError(
            f"{a.task}: {name_a!r} and {name_b!r} were graded on different dataset versions "
            f"({a.dataset_hash} vs {b.dataset_hash}); compare runs on the same dataset"
        )
    for doc_id in sorted(set(a.docs) & set(b.docs), key=doc_order):
        pa, pb = a.docs[doc_id].prompt_hash, b.docs[doc_id].prompt_hash
        if pa and pb and pa != pb:
            raise ConfigError(
                f"{a.task} doc {doc_id}: {name_a!r} and {name_b!r} were run on different prompts "
                f"(prompt_hash {pa[:12]} vs {pb[:12]}: another few-shot count, template or "
                "--samples order?); compare runs made with the same task settings"
            )


def _pair(a: TaskRun, b: TaskRun) -> _Paired:
    ids = sorted(set(a.docs) & set(b.docs), key=doc_order)
    scores = np.array(
        [[_nan(run.docs[i].score) for i in ids] for run in (a, b)], dtype=float
    ).reshape(2, len(ids))
    means = [[_record_means(run.docs[i]) for i in ids] for run in (a, b)]
    fields = {}
    for name in ACCOUNTING:
        values = np.array(
            [[m.get(name, math.nan) for m in side] for side in means], dtype=float
        ).reshape(2, len(ids))
        if not np.isnan(values).all(axis=1).any():  # both runs have the field somewhere
            fields[name] = values
    return _Paired(ids, scores, fields)


def _record_means(doc: Doc) -> dict[str, float]:
    """Each accounting field's mean over the doc's generations that recorded it."""
    sums: dict[str, list[float]] = {}
    for gen in doc.generations:
        for name in ACCOUNTING:
            value = (gen.record or {}).get(name)
            if isinstance(value, int | float):
                sums.setdefault(name, []).append(float(value))
    return {name: sum(v) / len(v) for name, v in sums.items()}


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _task_diff(
    task: str,
    metric: str | None,
    pair: _Paired,
    strata: list[int],
    resamples: int,
    seed: int,
) -> TaskDiff:
    scored = ~np.isnan(pair.scores).any(axis=0)
    sa, sb = pair.scores[0, scored], pair.scores[1, scored]
    ids = [i for i, ok in zip(pair.ids, scored) if ok]
    binary = bool(scored.any()) and bool(np.isin(pair.scores[:, scored], (0.0, 1.0)).all())
    lost = [i for i, x, y in zip(ids, sa, sb) if y < x]
    gained = [i for i, x, y in zip(ids, sa, sb) if y > x]
    rows = [np.where(scored, pair.scores[1] - pair.scores[0], np.nan)]
    rows += [values[1] - values[0] for values in pair.fields.values()]
    intervals = paired_bootstrap(np.vstack(rows), strata, resamples, seed)
    deltas = []
    for (name, values), interval in zip(pair.fields.items(), intervals[1:]):
        both = ~np.isnan(values).any(axis=0)
        if both.any():
            mean_a, mean_b = values[0, both].mean(), values[1, both].mean()
            deltas.append(Delta(name, int(both.sum()), float(mean_a), float(mean_b), interval))
    return TaskDiff(
        task,
        metric,
        len(ids),
        mean_stderr(sa),
        mean_stderr(sb),
        intervals[0] if ids else None,
        binary,
        mcnemar_exact(len(lost), len(gained)) if binary else None,
        lost,
        gained,
        [],
        [],
        deltas,
    )


def _overall(diffs: list[TaskDiff], paired: list[_Paired], resamples: int, seed: int) -> TaskDiff:
    """All tasks' documents together, each task resampled within itself."""
    names = [n for n in ACCOUNTING if any(n in p.fields for p in paired)]
    nan = [np.full((2, len(p.ids)), np.nan) for p in paired]
    merged = _Paired(
        [(d.task, i) for d, p in zip(diffs, paired) for i in p.ids],
        np.hstack([p.scores for p in paired]),
        {n: np.hstack([p.fields.get(n, x) for p, x in zip(paired, nan)]) for n in names},
    )
    strata = [len(p.ids) for p in paired]
    metric = diffs[0].metric if len({d.metric for d in diffs}) == 1 else None
    out = _task_diff("overall", metric, merged, strata, resamples, seed)
    out.only_base = [(d.task, i) for d in diffs for i in d.only_base]
    out.only_other = [(d.task, i) for d in diffs for i in d.only_other]
    return out


def diverge(task: str, a: Doc, b: Doc) -> list[Divergence]:
    """One Divergence per repeat both runs hold text for: where the two responses part."""
    out = []
    for ga, gb in zip(a.generations, b.generations):
        if ga.text is None or gb.text is None:
            continue
        char = len(os.path.commonprefix([ga.text, gb.text]))
        same = char == len(ga.text) == len(gb.text)
        tokens = (_token_at(ga, char), _token_at(gb, char))
        out.append(
            Divergence(
                task,
                a.doc_id,
                ga.repeat,
                None if same else char,
                (None, None) if same else tokens,
                ("", "") if same else (_writer(ga, tokens[0]), _writer(gb, tokens[1])),
                ga.text[max(0, char - CONTEXT) : char],
                (ga.text[char : char + CONTEXT], gb.text[char : char + CONTEXT]),
                (_answer(a, ga.repeat), _answer(b, gb.repeat)),
                (a.score, b.score),
            )
        )
    return out


def _token_at(gen: Generation, char: int) -> int | None:
    """Index of the token whose text holds ``char``; the token count where the text ends there."""
    offsets = (gen.record or {}).get("token_offsets")
    if not offsets:
        return None
    if char >= offsets[-1]:
        return len(offsets) - 1
    return bisect.bisect_right(offsets, char) - 1


def _writer(gen: Generation, token: int | None) -> str:
    """The Writer value of ``token`` in ``gen``."""
    if gen.record is None or token is None:
        return Writer.UNKNOWN.value
    if token >= int(gen.record.get("tokens", 0)):
        return Writer.END.value
    llm = token in set(gen.record.get("llm_positions", ()))
    return (Writer.LLM if llm else Writer.SLM).value


def _answer(doc: Doc, repeat: int) -> str | None:
    if repeat < len(doc.answers):
        return doc.answers[repeat]
    return doc.answers[0] if len(doc.answers) == 1 else None
