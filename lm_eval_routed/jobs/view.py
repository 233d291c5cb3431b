"""`lm-eval-routed view RUN [--diff OTHER] --out page.html`: one self-contained page of a run's samples.

Each document is a card: its score, target and extracted answers, and each response with the tokens
the LLM wrote highlighted and every SLM<->LLM switch marked, cut exactly at the token boundaries the
run recorded (``token_offsets``, never a re-tokenization), with the accounting record beside it. With
``--diff`` the other run's responses stand beside, the first divergence marked in both. The CSS and
the script for the filters (right / wrong / flipped) and the sorting (LLM share, latency) are inlined:
the page needs no network.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path
from typing import Any

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic
from lm_eval_routed.jobs.diff import check_same_prompts, diverge
from lm_eval_routed.jobs.diff_cli import read_runs
from lm_eval_routed.jobs.runs import Doc, Generation, Run, doc_order

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# record fields shown in a response's accounting table (positions and offsets are the highlighting)
HIDDEN = {
    "llm_positions",
    "token_offsets",
    "task",
    "doc_id",
    "idx",
    "repeat",
    "prompt_hash",
    "task_id",
}
SORTS = (
    ("order:asc", "document order"),
    ("share:desc", "LLM share, highest first"),
    ("share:asc", "LLM share, lowest first"),
    ("latency:desc", "latency, slowest first"),
    ("latency:asc", "latency, fastest first"),
    ("modeled:desc", "modeled latency, slowest first"),
)


def esc(text: str) -> str:
    """Text as HTML character data (quotes too: the same helper serves attributes)."""
    return html.escape(text, quote=True)


def token_spans(gen: Generation, mark: int | None = None) -> str:
    """A response as ``<pre>``: one span per generated token, ``l`` (LLM) or ``s`` (SLM), ``sw`` where
    the writer changes, ``dv`` on the token holding character ``mark``. Without usable offsets, the
    text in one plain span."""
    text, record = gen.text or "", gen.record or {}
    offsets = usable_offsets(text, record)
    if offsets is None:
        return f'<pre class="resp notok"><span class="raw">{esc(text)}</span></pre>'
    llm = set(record.get("llm_positions", ()))
    parts, previous = [], None
    for i, (start, end) in enumerate(zip(offsets, offsets[1:])):
        who = "l" if i in llm else "s"
        classes = [who]
        if previous is not None and who != previous:
            classes.append("sw")
        if mark is not None and start <= mark < end:
            classes.append("dv")
        previous = who
        parts.append(
            f'<span class="{" ".join(classes)}" title="token {i}, {"LLM" if who == "l" else "SLM"}">'
            f"{esc(text[start:end])}</span>"
        )
    if mark is not None and mark >= len(text):
        parts.append('<span class="dv end" title="the text ends here"></span>')
    return '<pre class="resp">' + "".join(parts) + "</pre>"


def usable_offsets(text: str, record: dict[str, Any]) -> list[int] | None:
    """The record's token offsets when they fit this text and token count, else None."""
    offsets = record.get("token_offsets")
    if not offsets or len(offsets) != int(record.get("tokens", -1)) + 1:
        return None
    if offsets[0] != 0 or offsets[-1] != len(text):
        return None
    if any(a > b for a, b in zip(offsets, offsets[1:])):
        return None
    return offsets


def _record_table(record: dict[str, Any] | None) -> str:
    if not record:
        return '<p class="note">no accounting record</p>'
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(_value(v))}</td></tr>"
        for k, v in record.items()
        if k not in HIDDEN
    )
    positions = record.get("llm_positions") or []
    rows += f"<tr><td>llm_positions</td><td>{esc(json.dumps(positions))}</td></tr>"
    return (
        f'<details><summary>accounting record</summary><table class="rec">{rows}</table></details>'
    )


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 1e4:
        return f"{value:,}"
    return str(value)


def _generation(gen: Generation, answer: str | None, mark: int | None) -> str:
    record = gen.record or {}
    meta = [f"repeat {gen.repeat}"]
    if record:
        meta.append(
            f"{record.get('tokens', 0)} tokens, LLM {record.get('tokens_llm', 0)} "
            f"({record.get('llm_share', 0):.0%}), {record.get('switches', 0)} switches"
        )
    if answer is not None:
        meta.append(f"answer: {answer!r}")
    note = ""
    if gen.text is None:
        note = '<p class="note">no response text in this run\'s files</p>'
    elif usable_offsets(gen.text, record) is None:
        note = '<p class="note">no token boundaries recorded for this response</p>'
    return (
        f'<div class="gen"><div class="meta">{esc(" · ".join(meta))}</div>{note}'
        f"{token_spans(gen, mark)}{_record_table(gen.record)}</div>"
    )


def _side(label: str, doc: Doc | None, marks: dict[int, int | None]) -> str:
    if doc is None:
        return f'<div class="side"><h3>{esc(label)}</h3><p class="note">not in this run</p></div>'
    gens = "".join(
        _generation(g, _answer(doc, g.repeat), marks.get(g.repeat)) for g in doc.generations
    )
    return (
        f'<div class="side"><h3>{esc(label)}</h3>{gens or "<p class=note>no responses</p>"}</div>'
    )


def _answer(doc: Doc, repeat: int) -> str | None:
    if repeat < len(doc.answers):
        return doc.answers[repeat]
    return doc.answers[0] if len(doc.answers) == 1 else None


def _mean(doc: Doc | None, name: str) -> float | None:
    values = [
        float(g.record[name])
        for g in (doc.generations if doc else [])
        if g.record and isinstance(g.record.get(name), int | float)
    ]
    return sum(values) / len(values) if values else None


def _score_badge(score: float | None) -> tuple[str, str]:
    if score is None:
        return "", ""
    kind = "right" if score == 1 else "wrong" if score == 0 else "partial"
    return f"{score:g}", f'<span class="badge {kind}">score {score:.3g}</span>'


def card(task: str, order: int, doc: Doc | None, other: Doc | None, labels: tuple[str, str]) -> str:
    """One document's card: header, then its responses (beside the other run's, with ``--diff``)."""
    main = doc or other
    assert main is not None
    score, badge = _score_badge(doc.score if doc else None)
    flip = ""
    marks: tuple[dict[int, int | None], dict[int, int | None]] = ({}, {})
    if doc is not None and other is not None:
        if doc.score is not None and other.score is not None and doc.score != other.score:
            flip = "lost" if doc.score < other.score else "gained"
        for d in diverge(task, other, doc):
            marks[0][d.repeat] = marks[1][d.repeat] = d.char
    head = [f"<span>{esc(task)} · doc {esc(str(main.doc_id))}</span>", badge]
    if flip:
        head.append(f'<span class="badge {flip}">{flip} vs {esc(labels[1])}</span>')
    if main.target is not None:
        head.append(f'<span class="badge">target: {esc(main.target)}</span>')
    sides = _side(labels[0], doc, marks[0])
    if labels[1]:
        sides += _side(labels[1], other, marks[1])
    data = {
        "task": task,
        "doc": str(main.doc_id),
        "order": str(order),
        "score": score,
        "flip": flip,
        "share": _num(_mean(doc, "llm_share")),
        "latency": _num(_mean(doc, "latency_s")),
        "modeled": _num(_mean(doc, "modeled_latency_s")),
    }
    attrs = " ".join(f'data-{k}="{esc(v)}"' for k, v in data.items())
    return (
        f'<section class="card" {attrs}><h2>{"".join(head)}</h2>'
        f'<div class="sides">{sides}</div></section>'
    )


def _num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6g}"


def page(run: Run, other: Run | None = None) -> str:
    """The whole page for ``run`` (and ``other`` beside it)."""
    labels = (run.label, other.label if other else "")
    cards, summary = [], []
    for task in sorted(run.tasks):
        docs = run.tasks[task].docs
        others = other.tasks[task].docs if other and task in other.tasks else {}
        ids = sorted(set(docs) | set(others), key=doc_order)
        for doc_id in ids:
            cards.append(card(task, len(cards), docs.get(doc_id), others.get(doc_id), labels))
        summary.append(_summary(task, run, other))
    options = "".join(
        f'<option value="{v}">{esc(t)}</option>'
        for v, t in [
            ("all", "all"),
            ("right", "right"),
            ("wrong", "wrong"),
            ("partial", "partly right"),
        ]
        + ([("flipped", "flipped"), ("lost", "lost"), ("gained", "gained")] if other else [])
    )
    sorts = "".join(f'<option value="{v}">{esc(t)}</option>' for v, t in SORTS)
    tasks = '<option value="">all tasks</option>' + "".join(
        f'<option value="{esc(t)}">{esc(t)}</option>' for t in sorted(run.tasks)
    )
    title = f"{run.label}" + (f" beside {other.label}" if other else "")
    css, js = (ASSETS / "view.css").read_text(), (ASSETS / "view.js").read_text()
    legend = (
        '<span><span class="key l">LLM</span> token written by the LLM</span>'
        '<span><span class="key">SLM</span> by the SLM</span>'
        '<span><span class="key sw">&nbsp;</span> switch</span>'
        + ('<span><span class="key dv">&nbsp;</span> first divergence</span>' if other else "")
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<style>{css}</style></head><body style="--sides: {2 if other else 1}">'
        f"<header><h1>{esc(title)}</h1>{''.join(summary)}"
        f'<div class="controls"><label>show <select id="filter">{options}</select></label>'
        f'<label>sort <select id="sort">{sorts}</select></label>'
        f'<label>task <select id="task">{tasks}</select></label>'
        f'<label>find <input id="search" type="search"></label>'
        f'<span id="count"></span><span class="legend">{legend}</span></div></header>'
        f'<main id="cards">{"".join(cards)}</main>'
        f"<script>{js}</script></body></html>\n"
    )


def _summary(task: str, run: Run, other: Run | None) -> str:
    parts = []
    for r in (run, other):
        if r is None or task not in r.tasks:
            continue
        docs = r.tasks[task].docs.values()
        scores = [d.score for d in docs if d.score is not None]
        shares = [s for s in (_mean(d, "llm_share") for d in docs) if s is not None]
        text = f"{r.label}: {len(docs)} docs"
        if scores:
            text += f", {r.tasks[task].metric} {sum(scores) / len(scores):.3f}"
        if shares:
            text += f", LLM share {sum(shares) / len(shares):.3f}"
        parts.append(text)
    return f'<p class="summary">{esc(task)} — {esc(" | ".join(parts))}</p>'


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lm-eval-routed view``."""
    ap = argparse.ArgumentParser(
        prog="lm-eval-routed view",
        description="One self-contained HTML page of a run's samples, the LLM's tokens highlighted.",
    )
    ap.add_argument("run", help="an lm-eval output folder or file, a sweep cell, EvalPlus samples")
    ap.add_argument("--diff", metavar="OTHER", help="a run to show beside it (its baseline)")
    ap.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    ap.add_argument("--task", action="append", default=[], help="only this task (repeatable)")
    ap.add_argument("--metric", help="the metric to show (default: each task's first)")
    ap.add_argument("--labels", help="comma-separated names for the run(s)")
    args = ap.parse_args(argv)
    try:
        paths = [args.run, *([args.diff] if args.diff else [])]
        runs = read_runs(paths, args.metric, args.labels, args.task)
        for task in set(runs[0].tasks) & set(runs[-1].tasks) if len(runs) > 1 else ():
            check_same_prompts(
                runs[1].tasks[task], runs[0].tasks[task], runs[1].label, runs[0].label
            )
    except ConfigError as err:
        print(f"lm-eval-routed view: {err}", file=sys.stderr)
        return 2
    write_atomic(args.out, page(runs[0], runs[1] if len(runs) > 1 else None))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
