"""leaderboard.html: the leaderboard as one self-contained page (inline CSS and JS, the plot inlined).

One sortable table per task (click a column's header; again to reverse it). Hovering a row shows the
configuration's model_args, and clicking it opens a detail line with them, ready to paste after
``lm_eval --model routed --model_args``. The Pareto plot is embedded as a base64 PNG, so the file can be
mailed or opened anywhere with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

# (row key, header, hover help)
HTML_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("number", "#", "the configuration's number in the plot"),
    ("config", "config", "configuration label"),
    ("accuracy", "accuracy", "the task's main metric"),
    ("stderr", "stderr", "standard error of the metric"),
    ("llm_share", "LLM share", "fraction of generated tokens the LLM wrote"),
    (
        "activated_params",
        "activated",
        "R2R's definition: (n_slm P_slm + n_llm P_llm) / n per token",
    ),
    ("activated_params_charged", "charged", "SLM on every token + LLM on every position it scored"),
    ("latency_s", "latency (s)", "wall-clock seconds per sample on this machine"),
    ("modeled_latency_s", "modeled (s)", "the same forwards priced by the cost model"),
    ("speedup_vs_llm_only", "speedup", "llm-only's wall-clock latency / this one's"),
    ("modeled_speedup_vs_llm_only", "modeled speedup", "the same on modeled latency"),
    ("n", "n", "samples scored"),
    (
        "latency_b1_s",
        "latency b1 (s)",
        "wall-clock seconds per sample at batch size 1, on a subset",
    ),
    ("speedup_b1_vs_llm_only", "speedup b1", "llm-only's batch-1 latency / this one's"),
)

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.25em .5em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th:nth-child(2),td:nth-child(2){text-align:left;white-space:normal}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tr.row{cursor:pointer}tr.row:hover{background:#f0f6ff}
tr.detail td{text-align:left;background:#fafafa;font-size:.9em}
code{font:12px ui-monospace,monospace;word-break:break-all;white-space:normal}
img{max-width:100%;height:auto}.muted{color:#666}
"""

# Sorting moves each row together with its detail line; numbers sort as numbers, blanks last.
_JS = """
document.querySelectorAll('table.board').forEach(function(table){
  var heads=table.querySelectorAll('th');
  heads.forEach(function(th,col){th.addEventListener('click',function(){
    var asc=th.getAttribute('aria-sort')!=='ascending';
    heads.forEach(function(h){h.removeAttribute('aria-sort')});
    th.setAttribute('aria-sort',asc?'ascending':'descending');
    var body=table.tBodies[0],pairs=[];
    body.querySelectorAll('tr.row').forEach(function(r){pairs.push([r,r.nextElementSibling])});
    function key(r){var v=r.cells[col].getAttribute('data-v');var f=parseFloat(v);
      return v===''?null:(isNaN(f)?v.toLowerCase():f)}
    pairs.sort(function(a,b){var x=key(a[0]),y=key(b[0]);
      if(x===null)return y===null?0:1;if(y===null)return -1;
      var c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
      return asc?c:-c});
    pairs.forEach(function(p){body.appendChild(p[0]);body.appendChild(p[1])});
  })});
  table.querySelectorAll('tr.row').forEach(function(r){r.addEventListener('click',function(){
    var d=r.nextElementSibling;d.hidden=!d.hidden})});
});
"""


def _raw(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def render_html(
    rows: list[dict[str, Any]],
    fmt,
    numbers: dict[str, int],
    png: bytes | None,
    title: str = "lm-eval-routed leaderboard",
) -> str:
    """The page: the plot, then one table per task; ``fmt(key, value)`` writes each cell's text."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        '<p class="muted">Click a column header to sort; hover a row for its model_args, click it '
        "to show them. Speedups are against the same task's llm-only row.</p>",
    ]
    if png:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            '<figure><img alt="accuracy against cost, one panel per cost view and task" '
            f'src="data:image/png;base64,{data}"></figure>'
        )
    for task in sorted({r["task"] for r in rows}, key=lambda t: [r["task"] for r in rows].index(t)):
        parts.append(f'<h2 id="{e(task, quote=True)}">{e(task)}</h2>')
        parts.append(f'<table class="board" data-task="{e(task, quote=True)}"><thead><tr>')
        parts += [
            f'<th title="{e(hint, quote=True)}">{e(head)}</th>' for _, head, hint in HTML_COLUMNS
        ]
        parts.append("</tr></thead><tbody>")
        for r in (r for r in rows if r["task"] == task):
            cells = {**r, "number": numbers.get(r["config"])}
            args = r.get("model_args") or ""
            parts.append(f'<tr class="row" title="{e(args, quote=True)}">')
            for key, _, _ in HTML_COLUMNS:
                value = cells.get(key)
                text = str(value) if key in ("number", "config") else fmt(key, value)
                parts.append(f'<td data-v="{e(_raw(value), quote=True)}">{e(text)}</td>')
            parts.append(
                f'</tr><tr class="detail" hidden><td colspan="{len(HTML_COLUMNS)}">'
                f"model_args: <code>{e(args)}</code></td></tr>"
            )
        parts.append("</tbody></table>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"
