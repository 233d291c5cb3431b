"""The leaderboard's picture: accuracy against cost, one panel per cost view and one row per task.

Every configuration gets one number and one colour, the same in every panel; the points carry only
their numbers and the legend below the panels names them, so a long label never runs across the plot.
Numbers are placed by a greedy search around their point that refuses any spot overlapping another
number, a point or the axes' edge (a thin leader line joins a number pushed away from its point). A
random control shares its router's colour, is drawn hollow and is joined to its router by a dashed
line. Error bars are one standard error; the grey step line is the Pareto front (no configuration
both cheaper and more accurate). The batch-1 latency panel appears when some row has that measurement
(the demo's decode-bound task); a task without it says so in its panel.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

# (row key, axis label, scale to display units)
COST_VIEWS: tuple[tuple[str, str, float], ...] = (
    ("activated_params", "activated params per token (M, R2R's definition)", 1e-6),
    ("activated_params_charged", "charged params per token (M: every position scored)", 1e-6),
    ("modeled_latency_s", "modeled latency per sample (s)", 1.0),
    ("latency_b1_s", "wall latency per sample at batch 1 (s, a subset)", 1.0),
)
BASELINES = ("slm-only", "llm-only")
# what an empty panel says, where "no data" would mislead
_EMPTY = {"latency_b1_s": "not measured at batch 1 on this task"}
_RADII = (6, 10, 15, 21, 28, 36, 46, 58)  # points from the marker's centre
_ANGLES = (45, 135, -45, -135, 90, -90, 0, 180, 22, 158, -22, -158, 68, 112, -68, -112)


@dataclass(frozen=True)
class Entry:
    """One configuration as the plot shows it: its number, legend label, colour and control link."""

    number: int
    label: str
    color: Any
    control_of: str | None  # the router label this random control is share-matched to


def entries(rows: list[dict[str, Any]]) -> dict[str, Entry]:
    """Number and colour each configuration once, in the order of its first row."""
    import matplotlib

    # dark enough for a number in that colour to read on white; the baselines in black
    palette = [c for c in matplotlib.colormaps["tab10"].colors if c[0] != c[1]]  # grey left out
    palette += matplotlib.colormaps["Dark2"].colors
    labels: list[str] = []
    controls: dict[str, str | None] = {}
    for r in rows:
        if r["config"] not in controls:
            labels.append(r["config"])
            controls[r["config"]] = r.get("control_of")
    out: dict[str, Entry] = {}
    rank = 0
    for i, label in enumerate(labels):
        if label in BASELINES:
            color = (0.0, 0.0, 0.0)
        else:
            color, rank = palette[rank % len(palette)], rank + 1
        out[label] = Entry(i + 1, label, color, controls[label])
    # a control takes its router's colour, so the pair reads as one
    for label, e in out.items():
        router = out.get(e.control_of or "")
        if router is not None:
            out[label] = Entry(e.number, label, router.color, e.control_of)
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points that no other point beats on both; cheapest first."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def pareto_figure(rows: list[dict[str, Any]]):
    """The figure: one row of panels per task, one panel per cost view, a numbered legend below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tasks = sorted({r["task"] for r in rows})
    # rows with no accounting (a plain lm-eval run) still get a panel, empty, beside the table
    views = [v for v in COST_VIEWS if any(r.get(v[0]) is not None for r in rows)] or [COST_VIEWS[0]]
    marks = entries(rows)
    ncol = 2 if max((len(e.label) for e in marks.values()), default=0) > 40 else 3
    legend_h = 0.25 + 0.19 * math.ceil(len(marks) / ncol)
    panel_h = 3.6
    height = panel_h * len(tasks) + legend_h
    fig, axes = plt.subplots(
        len(tasks), len(views), figsize=(5.2 * len(views), height), squeeze=False, dpi=120
    )
    fig.subplots_adjust(
        left=0.06,
        right=0.99,
        top=1 - 0.35 / height,
        bottom=(legend_h + 0.45) / height,
        hspace=0.45,
        wspace=0.22,
    )
    for row_axes, task in zip(axes, tasks):
        for ax, (key, xlabel, scale) in zip(row_axes, views):
            pts = [r for r in rows if r["task"] == task and r.get(key)]
            _panel(ax, pts, key, scale, marks, _EMPTY.get(key, "no data"))
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_title(task, fontsize=9)
        row_axes[0].set_ylabel("accuracy (± 1 s.e.)")
    fig.canvas.draw()  # final axes positions: numbers are placed in display space
    for row_axes, task in zip(axes, tasks):
        for ax, (key, _, scale) in zip(row_axes, views):
            pts = [r for r in rows if r["task"] == task and r.get(key)]
            _place_numbers(ax, pts, key, scale, marks)
    handles = [
        Line2D(
            [],
            [],
            ls="none",
            marker="o",
            markerfacecolor="none" if e.control_of else e.color,
            markeredgecolor=e.color,
            label=f"{e.number}  {e.label}",
        )
        for e in marks.values()
    ]
    handles.append(
        Line2D([], [], color="0.6", ls="-", drawstyle="steps-post", label="Pareto front")
    )
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=ncol,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    return fig


def _panel(
    ax,
    pts: list[dict[str, Any]],
    key: str,
    scale: float,
    marks: dict[str, Entry],
    empty: str = "no data",
) -> None:
    if not pts:
        ax.text(0.5, 0.5, empty, ha="center", fontsize=8, transform=ax.transAxes)
        ax.set_xticks([])  # no scale to read on a panel with nothing on it
        ax.set_yticks([])
        return
    xy = {r["config"]: (r[key] * scale, r["accuracy"]) for r in pts}
    front = pareto_front(list(xy.values()))
    ax.plot(*zip(*front), color="0.6", lw=1.2, drawstyle="steps-post", zorder=1)
    for r in pts:
        e = marks[r["config"]]
        router = xy.get(e.control_of or "")
        if router is not None:  # tie the control to the router it controls
            ax.plot(*zip(xy[r["config"]], router), ls="--", lw=1, color=e.color, zorder=1)
    for r in pts:
        e = marks[r["config"]]
        stderr = r.get("stderr")
        ax.errorbar(
            *xy[r["config"]],
            yerr=stderr if stderr is not None and math.isfinite(stderr) else None,
            fmt="o",
            ms=5,
            color=e.color,
            markerfacecolor="white" if e.control_of else e.color,
            capsize=2,
            lw=1,
            zorder=3,
        )
    xs = [x for x, _ in xy.values()]
    if max(xs) / min(xs) > 6:  # speculative's charged cost is several times everyone else's
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
        ax.tick_params(axis="x", which="minor", labelsize=6)
    ax.margins(x=0.12, y=0.18)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)


def _minor_label(value: float, _pos) -> str:
    """Minor log ticks labelled at 2, 3 and 5 times a power of ten only (no crowding)."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if any(abs(lead - d) < 1e-6 for d in (2, 3, 5)) else ""


def _place_numbers(ax, pts, key: str, scale: float, marks: dict[str, Entry]) -> None:
    """Each point's number at the nearest spot clear of other numbers, points and the axes' edge."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    taken = []  # boxes a number may not cover: every marker and error bar, then placed numbers
    dot = 4 * fig.dpi / 72  # half a marker, in pixels
    for r in pts:
        x, y = to_px((r[key] * scale, r["accuracy"]))
        taken.append((x - dot, y - dot, x + dot, y + dot))
        stderr = r.get("stderr")
        if stderr is not None and math.isfinite(stderr):
            _, lo = to_px((r[key] * scale, r["accuracy"] - stderr))
            _, hi = to_px((r[key] * scale, r["accuracy"] + stderr))
            taken.append((x - 1, lo - 1, x + 1, hi + 1))
    for r in pts:
        e = marks[r["config"]]
        text = ax.annotate(
            str(e.number),
            (r[key] * scale, r["accuracy"]),
            xytext=(0, 0),
            textcoords="offset points",
            fontsize=7,
            fontweight="bold",
            color=e.color,
            ha="center",
            va="center",
            zorder=4,
        )
        # first inside the panel; a crowded panel lets a number out past its edge before onto another
        box = (
            _free_spot(text, renderer, taken, frame, _RADII)
            or _free_spot(text, renderer, taken, None, _RADII)
            or _free_spot(text, renderer, taken, None, range(70, 1000, 10))
        )
        taken.append(box or _box(text, renderer))
        if math.hypot(*text.get_position()) > _RADII[1]:  # a leader line back to the point
            ax.annotate(
                "",
                (r[key] * scale, r["accuracy"]),
                xytext=text.get_position(),
                textcoords="offset points",
                arrowprops={
                    "arrowstyle": "-",
                    "color": e.color,
                    "lw": 0.6,
                    "shrinkA": 5,
                    "shrinkB": 3,
                },
                zorder=2,
            )


def _free_spot(text, renderer, taken, frame, radii) -> tuple[float, ...] | None:
    """Move ``text`` to the first offset whose box is clear of ``taken`` (and inside ``frame``)."""
    for radius in radii:
        for angle in _ANGLES:
            text.set_position(
                (radius * math.cos(math.radians(angle)), radius * math.sin(math.radians(angle)))
            )
            box = _box(text, renderer)
            if frame is not None and not (
                box[0] >= frame.x0
                and box[2] <= frame.x1
                and box[1] >= frame.y0
                and box[3] <= frame.y1
            ):
                continue
            if not any(_overlap(box, t) for t in taken):
                return box
    return None


def _box(text, renderer) -> tuple[float, float, float, float]:
    """The text's box in pixels, one pixel of air around it."""
    ext = text.get_window_extent(renderer)
    return (ext.x0 - 1, ext.y0 - 1, ext.x1 + 1, ext.y1 + 1)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def pareto_png(rows: list[dict[str, Any]]) -> bytes:
    """The figure as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(rows)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
