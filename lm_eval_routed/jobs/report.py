"""A diff's comparisons as a terminal table, Markdown, CSV or JSON (``lm-eval-routed diff --format``)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from enum import Enum
from typing import Any

from lm_eval_routed.jobs.diff import Comparison, Delta, Divergence, TaskDiff

IDS_SHOWN = 20  # flipped doc ids listed per side in tables (JSON and CSV list them all)


class Format(str, Enum):
    """Output formats of ``lm-eval-routed diff``."""

    TABLE = "table"
    MD = "md"
    CSV = "csv"
    JSON = "json"


def render(comparisons: list[Comparison], fmt: Format) -> str:
    """The whole report in one format."""
    if fmt is Format.JSON:
        return json.dumps([_plain(dataclasses.asdict(c)) for c in comparisons], indent=1) + "\n"
    if fmt is Format.CSV:
        return _csv(comparisons)
    return "\n".join(_text(c, markdown=fmt is Format.MD) for c in comparisons)


# -- numbers ------------------------------------------------------------------------------------


def number(value: float | None, name: str = "") -> str:
    """A figure as a reader wants it: parameters in M/B, seconds and rates with three decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if name.startswith("activated_params"):
        return f"{value / 1e9:.2f}B" if abs(value) >= 1e9 else f"{value / 1e6:.1f}M"
    if name in ("switches", "tokens"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def _signed(value: float, name: str = "") -> str:
    text = number(value, name)
    return text if text.startswith("-") or text == "-" else "+" + text


def _interval(mean: float, low: float, high: float, name: str = "") -> str:
    if math.isnan(mean):
        return "-"
    return f"{_signed(mean, name)} [{_signed(low, name)}, {_signed(high, name)}]"


def _score(mean_se: tuple[float, float]) -> str:
    mean, se = mean_se
    return "-" if math.isnan(mean) else f"{mean:.3f} ± {number(se)}"


def _ids(ids: list[Any]) -> str:
    shown = ", ".join(_doc(i) for i in ids[:IDS_SHOWN])
    more = f", ... ({len(ids) - IDS_SHOWN} more)" if len(ids) > IDS_SHOWN else ""
    return (shown + more) or "none"


def _doc(doc_id: Any) -> str:
    return f"{doc_id[0]}:{doc_id[1]}" if isinstance(doc_id, list | tuple) else str(doc_id)


# -- terminal and Markdown ------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [header, ["---"] * len(header), *rows]
        return "\n".join(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in lines
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *rows])


def _text(c: Comparison, markdown: bool) -> str:
    title = f"{c.other} vs {c.base} (baseline)"
    out = [f"## {title}" if markdown else f"== {title}", ""]
    diffs = [*c.tasks, *([c.overall] if c.overall else [])]
    header = [
        "task",
        "metric",
        "n",
        c.base,
        c.other,
        "diff [95% CI]",
        "McNemar p",
        "lost",
        "gained",
    ]
    header.append("only in one")
    rows = [
        [
            d.task,
            d.metric or "-",
            str(d.n),
            _score(d.base),
            _score(d.other),
            _interval(d.diff.mean, d.diff.low, d.diff.high) if d.diff else "-",
            number(d.p_value) if d.p_value is not None else "-",
            str(len(d.lost)),
            str(len(d.gained)),
            f"{len(d.only_base)} / {len(d.only_other)}",
        ]
        for d in diffs
    ]
    out += [_table(header, rows, markdown), ""]
    for name in c.only_base_tasks + c.only_other_tasks:
        side = c.base if name in c.only_base_tasks else c.other
        out.append(f"task {name} is in {side!r} only: not compared")
    for d in c.tasks:
        out += _flips(d, c, markdown)
    for d in diffs:
        out += _accounting(d, c, markdown)
    out += [f"note: {n}" if not markdown else f"- note: {n}" for n in c.notes]
    out += [""] if c.notes else []
    if c.samples:
        out += _samples(c, markdown)
    return "\n".join(out).rstrip() + "\n"


def _flips(d: TaskDiff, c: Comparison, markdown: bool) -> list[str]:
    if d.binary:
        lost = f"wrong in {c.other!r}, right in the baseline"
        gained = f"right in {c.other!r}, wrong in the baseline"
    else:
        lost = f"lower in {c.other!r} than in the baseline"
        gained = f"higher in {c.other!r} than in the baseline"
    lines = [f"{d.task}: {lost}: {_ids(d.lost)}", f"{d.task}: {gained}: {_ids(d.gained)}"]
    if d.only_base or d.only_other:
        lines += [
            f"{d.task}: only in {c.base!r}: {_ids(d.only_base)}",
            f"{d.task}: only in {c.other!r}: {_ids(d.only_other)}",
        ]
    return [*(f"- {x}" if markdown else x for x in lines), ""]


def _accounting(d: TaskDiff, c: Comparison, markdown: bool) -> list[str]:
    if not d.accounting:
        return []
    header = ["field", "n", c.base, c.other, "diff [95% CI]"]
    rows = [
        [
            a.field,
            str(a.n),
            number(a.base, a.field),
            number(a.other, a.field),
            _interval(a.diff.mean, a.diff.low, a.diff.high, a.field),
        ]
        for a in d.accounting
    ]
    title = f"accounting, {d.task} (mean per document; diff = {c.other} - {c.base})"
    return [f"### {title}" if markdown else title, "", _table(header, rows, markdown), ""]


def _samples(c: Comparison, markdown: bool) -> list[str]:
    header = ["task", "doc", "repeat", "scores", "diverges at", "writers", "text", "answers"]
    rows = [_sample_row(s) for s in c.samples]
    title = "per sample: first diverging character and token (token index in each run)"
    return [f"### {title}" if markdown else title, "", _table(header, rows, markdown), ""]


def _sample_row(s: Divergence) -> list[str]:
    scores = f"{number(s.scores[0])} -> {number(s.scores[1])}"
    answers = f"{s.answers[0]!r} vs {s.answers[1]!r}"
    if s.char is None:
        return [s.task, _doc(s.doc_id), str(s.repeat), scores, "same text", "-", "-", answers]
    tokens = " / ".join("?" if t is None else str(t) for t in s.tokens)
    where = f"char {s.char}, token {tokens}"
    text = f"{s.common[-15:]!r} + {s.rest[0][:15]!r} vs {s.rest[1][:15]!r}"
    writers = " / ".join(s.writers)
    return [s.task, _doc(s.doc_id), str(s.repeat), scores, where, writers, text, answers]


# -- CSV and JSON -----------------------------------------------------------------------------------

CSV_COLUMNS = (
    *("kind", "baseline", "run", "task", "quantity", "n", "baseline_value", "run_value"),
    *("diff", "ci_low", "ci_high", "p_value", "lost", "gained", "only_baseline", "only_run"),
    *("doc_id", "repeat", "char", "token_baseline", "token_run", "writer_baseline", "writer_run"),
    *("answer_baseline", "answer_run"),
)


def _csv(comparisons: list[Comparison]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in comparisons:
        for d in [*c.tasks, *([c.overall] if c.overall else [])]:
            writer.writerow(_score_row(c, d))
            writer.writerows(_delta_row(c, d, a) for a in d.accounting)
        writer.writerows(_divergence_row(c, s) for s in c.samples)
    return buffer.getvalue()


def _score_row(c: Comparison, d: TaskDiff) -> dict[str, Any]:
    return {
        "kind": "score",
        "baseline": c.base,
        "run": c.other,
        "task": d.task,
        "quantity": d.metric,
        "n": d.n,
        "baseline_value": d.base[0],
        "run_value": d.other[0],
        **(dict(zip(("diff", "ci_low", "ci_high"), dataclasses.astuple(d.diff))) if d.diff else {}),
        "p_value": d.p_value,
        "lost": " ".join(_doc(i) for i in d.lost),
        "gained": " ".join(_doc(i) for i in d.gained),
        "only_baseline": " ".join(_doc(i) for i in d.only_base),
        "only_run": " ".join(_doc(i) for i in d.only_other),
    }


def _delta_row(c: Comparison, d: TaskDiff, a: Delta) -> dict[str, Any]:
    return {
        "kind": "accounting",
        "baseline": c.base,
        "run": c.other,
        "task": d.task,
        "quantity": a.field,
        "n": a.n,
        "baseline_value": a.base,
        "run_value": a.other,
        **dict(zip(("diff", "ci_low", "ci_high"), dataclasses.astuple(a.diff))),
    }


def _divergence_row(c: Comparison, s: Divergence) -> dict[str, Any]:
    return {
        "kind": "sample",
        "baseline": c.base,
        "run": c.other,
        "task": s.task,
        "baseline_value": s.scores[0],
        "run_value": s.scores[1],
        "doc_id": s.doc_id,
        "repeat": s.repeat,
        "char": s.char,
        "token_baseline": s.tokens[0],
        "token_run": s.tokens[1],
        "writer_baseline": s.writers[0],
        "writer_run": s.writers[1],
        "answer_baseline": s.answers[0],
        "answer_run": s.answers[1],
    }


def _plain(value: Any) -> Any:
    """JSON-safe: NaN as null, tuples as lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
