"""The leaderboard's page and plot: every table row on the page, numbers in the plot that never overlap."""

from __future__ import annotations

import base64
import csv
import itertools
from html.parser import HTMLParser

import pytest

from lm_eval_routed.jobs.leaderboard import COLUMNS, _fmt, build_rows, write_leaderboard
from lm_eval_routed.jobs.leaderboard_html import HTML_COLUMNS
from lm_eval_routed.jobs.pareto import entries, pareto_figure, pareto_front

CITER = "citer <demo & ckpt>"  # markup characters must come through escaped, not as tags


def summary(label, task, acc, share, act, charged=None, lat=0.1, control_of=None, **config):
    s = {
        "label": label,
        "task": task,
        "config": {"slm": "demo:slm", "llm": "demo:llm", "threshold": None, **config},
        "metrics": {"exact_match,none": acc, "exact_match_stderr,none": 0.05},
        "n_samples": 40,
        "accounting": {
            "llm_share": share,
            "activated_params": act * 1e6,
            "activated_params_charged": (charged or act) * 1e6,
            "latency_s": lat,
            "modeled_latency_s": lat * 1.5,
        },
    }
    if control_of:
        s["control_of"] = control_of
    return s


def demo_like() -> list[dict]:
    """Two tasks; a router with its random control; a cost outlier; three configs on one spot."""
    out = []
    for task, bump in (("routed_demo", 0.0), ("routed_demo_cot", 0.1)):
        out += [
            summary("slm-only", task, 0.05 + bump, 0.0, 42.5, lat=0.02, router="slm-only"),
            summary("llm-only", task, 0.6 + bump, 1.0, 134.5, 177, lat=0.1, router="llm-only"),
            summary(CITER, task, 0.45, 0.46, 85.2, 106, 0.08, router="citer", threshold=0.5),
            summary(
                "random p=0.46 (share-matched to citer)",
                task,
                0.35,
                0.46,
                84.9,
                104,
                0.06,
                control_of=CITER,
                router="random",
                p=0.46,
            ),
            summary("speculative", task, 0.6 + bump, 0.5, 88.5, 628.7, 0.2, router="speculative"),
        ]
        # three configurations that land on exactly the same point
        out += [
            summary(f"random p=0.4{k} seed {k}", task, 0.3, 0.4, 73.5, lat=0.05, router="random")
            for k in range(3)
        ]
    return out


class Tables(HTMLParser):
    """Collects each board table's body rows (cell texts), detail lines, and every src/href."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.details: dict[str, list[str]] = {}
        self.titles: list[str] = []
        self.links: list[str] = []
        self.task = self.kind = None
        self.cell: list[str] | None = None
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("src", "href") if k in a]
        if tag == "script":
            self.scripts += 1
        if tag == "table" and "board" in a.get("class", ""):
            self.task = a["data-task"]
            self.rows[self.task], self.details[self.task] = [], []
        elif tag == "tr" and self.task:
            self.kind = a.get("class")
            if self.kind == "row":
                self.rows[self.task].append([])
                self.titles.append(a.get("title", ""))
            elif self.kind == "detail":
                self.details[self.task].append("")
        elif tag == "td" and self.task:
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            text = "".join(self.cell)
            if self.kind == "row":
                self.rows[self.task][-1].append(text)
            else:
                self.details[self.task][-1] += text
            self.cell = None
        elif tag == "table":
            self.task = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def test_html_page_carries_every_row_of_the_table(tmp_path):
    summaries = demo_like()
    markdown = write_leaderboard(summaries, tmp_path)
    page = (tmp_path / "leaderboard.html").read_text()
    parsed = Tables()
    parsed.feed(page)
    rows = build_rows(summaries)
    assert len(markdown.strip().splitlines()) == 2 + len(rows)  # header, rule, one line per row
    assert set(parsed.rows) == {"routed_demo", "routed_demo_cot"}
    numbers = {label: e.number for label, e in entries(rows).items()}
    keys = [k for k, _, _ in HTML_COLUMNS]
    for task in parsed.rows:
        want = [r for r in rows if r["task"] == task]
        got = parsed.rows[task]
        assert len(got) == len(want) == len(parsed.details[task])
        for cells, r, detail in zip(got, want, parsed.details[task]):
            expect = {k: _fmt(k, r[k]) for k in COLUMNS if k != "task"}
            expect.update(number=str(numbers[r["config"]]), config=r["config"])
            assert cells == [expect[k] for k in keys]
            assert r["model_args"] and r["model_args"] in detail
    assert CITER in {c[1] for t in parsed.rows.values() for c in t}  # escaped, read back intact
    assert "<demo" not in page.replace("&lt;demo", "")
    # model_args on hover: every row's title, and they name the router
    assert all("router=" in t for t in parsed.titles) and len(parsed.titles) == len(rows)
    # self-contained: the only source is the inlined plot, and it is a PNG
    assert len(parsed.links) == 1 and parsed.links[0].startswith("data:image/png;base64,")
    png = base64.b64decode(parsed.links[0].split(",", 1)[1])
    assert png == (tmp_path / "pareto.png").read_bytes() and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert parsed.scripts == 1  # the sorter, inline
    # the CSV carries the same rows and how to run each
    with (tmp_path / "leaderboard.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["config"], r["task"]) for r in table] == [(r["config"], r["task"]) for r in rows]
    assert all(r["model_args"].startswith("slm=demo:slm,llm=demo:llm,") for r in table)
    assert all(",router=" in r["model_args"] and "=None" not in r["model_args"] for r in table)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def number_boxes(fig):
    """Each panel's number labels and their boxes on the canvas."""
    renderer = fig.canvas.get_renderer()
    panels = []
    for ax in fig.axes:
        texts = [t for t in ax.texts if t.get_text().isdigit()]
        panels.append([(t.get_text(), t.get_window_extent(renderer)) for t in texts])
    return panels


def test_plot_numbers_each_point_once_and_never_overlap():
    import matplotlib.pyplot as plt

    rows = build_rows(demo_like())
    # more on one spot than the first ring of places around it holds
    crowd = [
        summary(f"crowd {k} " + "long label " * 6, "routed_demo", 0.3, 0.4, 73.5, router="random")
        for k in range(9)
    ]
    rows += build_rows(crowd)
    fig = pareto_figure(rows)
    fig.canvas.draw()
    panels = number_boxes(fig)
    assert len(panels) == 2 * 3  # two tasks x three cost views
    per_task = {"routed_demo": 8 + 9, "routed_demo_cot": 8}
    for (ax, labels), task in zip(zip(fig.axes, panels), [t for t in per_task for _ in range(3)]):
        assert ax.get_title() == task
        assert len(labels) == per_task[task]  # one number per configuration, none twice
        assert len({t for t, _ in labels}) == len(labels)
        for (a, box_a), (b, box_b) in itertools.combinations(labels, 2):
            assert not box_a.overlaps(box_b), f"numbers {a} and {b} overlap in {task}"
    # the legend names every configuration once, by its number, plus the front
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    marks = entries(rows)
    assert legend[:-1] == [f"{e.number}  {e.label}" for e in marks.values()]
    assert legend[-1] == "Pareto front" and len(marks) == 8 + 9
    plt.close(fig)


def test_a_control_wears_its_routers_colour_and_is_tied_to_it():
    import matplotlib.pyplot as plt

    rows = build_rows(demo_like())
    marks = entries(rows)
    control = marks["random p=0.46 (share-matched to citer)"]
    assert control.control_of == CITER and control.color == marks[CITER].color
    others = [e.color for label, e in marks.items() if label not in (CITER, control.label)]
    assert marks[CITER].color not in others
    fig = pareto_figure(rows)
    # one dashed line per panel from the control to its router
    for ax in fig.axes:
        dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
        assert len(dashed) == 1 and dashed[0].get_color() == control.color
    plt.close(fig)


@pytest.mark.parametrize(
    "points,front",
    [
        ([(1, 0.1), (2, 0.5), (3, 0.4), (4, 0.6)], [(1, 0.1), (2, 0.5), (4, 0.6)]),
        ([(2, 0.5), (2, 0.5), (1, 0.5)], [(1, 0.5)]),  # ties: the cheaper one alone
        ([(2, 0.3), (2, 0.6)], [(2, 0.6)]),
    ],
)
def test_pareto_front(points, front):
    assert pareto_front(points) == front
