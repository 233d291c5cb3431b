"""Batch-1 latency beside the batched figures: the demo's extra pass, the columns, the plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lm_eval_routed.jobs.demo import DEMO_TASKS, LATENCY_B1_TASK, demo_configs, demo_passes
from lm_eval_routed.jobs.leaderboard import build_rows, to_csv, to_markdown, write_leaderboard
from lm_eval_routed.jobs.pareto import pareto_figure


def cell(label, task, acc, lat, router, batch_size=8):
    """A cell summary as a sweep writes it, reduced to what the leaderboard reads."""
    return {
        "label": label,
        "task": task,
        "config": {"router": router, "batch_size": batch_size},
        "metrics": {"exact_match,none": acc, "exact_match_stderr,none": 0.05},
        "n_samples": 48,
        "accounting": {
            "llm_share": {"llm-only": 1.0, "slm-only": 0.0}.get(router, 0.4),
            "activated_params": 1e8,
            "activated_params_charged": 1e8,
            "latency_s": lat,
            "modeled_latency_s": lat,
        },
    }


COT = "routed_demo_cot"


def batched() -> list[dict]:
    return [
        cell("llm-only", "routed_demo", 0.6, 0.1, "llm-only"),
        cell("r2r", "routed_demo", 0.5, 0.09, "r2r"),
        cell("llm-only", COT, 0.5, 0.5, "llm-only"),
        cell("r2r", COT, 0.46, 0.3, "r2r"),
        cell("random p=0.4 (share-matched to r2r)", COT, 0.3, 0.2, "random"),
    ]


def batch1() -> list[dict]:
    # batch-1 latencies unlike the batched ones, so a row reading the wrong cell shows
    return [
        cell("llm-only", COT, 0.5, 2.0, "llm-only", batch_size=1),
        cell("r2r", COT, 0.5, 0.8, "r2r", batch_size=1),
    ]


def test_batch1_columns_from_the_batch1_cells():
    rows = {(r["config"], r["task"]): r for r in build_rows(batched(), batch1=batch1())}
    assert rows["llm-only", COT]["latency_b1_s"] == 2.0
    assert rows["llm-only", COT]["speedup_b1_vs_llm_only"] == 1.0
    assert rows["r2r", COT]["latency_b1_s"] == 0.8
    assert rows["r2r", COT]["speedup_b1_vs_llm_only"] == 2.5  # 2.0 / 0.8
    assert rows["r2r", COT]["speedup_vs_llm_only"] == 0.5 / 0.3  # the batched figure untouched
    # no batch-1 cell: the task without one, and the control the demo adds afterwards
    for key in (("llm-only", "routed_demo"), ("r2r", "routed_demo"), (batched()[4]["label"], COT)):
        assert rows[key]["latency_b1_s"] is None and rows[key]["speedup_b1_vs_llm_only"] is None
    table = {
        line.split(" | ")[0][2:]: line for line in to_markdown(list(rows.values())).splitlines()
    }
    assert table["r2r"].endswith("| 48 | 0.800 | 2.50x |")
    # one row per (config, task): the batch-1 cells are columns, not rows
    assert len(rows) == len(batched())


def test_batch1_without_llm_only_leaves_the_speedup_empty():
    rows = {r["config"]: r for r in build_rows(batched()[2:], batch1=batch1()[1:])}
    assert rows["r2r"]["latency_b1_s"] == 0.8 and rows["r2r"]["speedup_b1_vs_llm_only"] is None


def test_a_sweep_without_batch1_renders_with_the_columns_empty(tmp_path):
    markdown = write_leaderboard(batched(), tmp_path)
    header, _, *lines = markdown.splitlines()
    assert header.endswith("| n | latency_b1_s | speedup_b1_vs_llm_only |")
    assert all(line.endswith("| 48 | - | - |") for line in lines)
    table = list(csv.DictReader(io.StringIO((tmp_path / "leaderboard.csv").read_text())))
    assert {(r["latency_b1_s"], r["speedup_b1_vs_llm_only"]) for r in table} == {("", "")}
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "latency b1 (s)" in (tmp_path / "leaderboard.html").read_text()
    assert to_csv(build_rows(batched())).splitlines()[0].count("b1") == 2


def panels(fig) -> dict[tuple[str, str], object]:
    return {(ax.get_title(), ax.get_xlabel()): ax for ax in fig.axes}


def test_the_plot_has_a_batch1_panel_only_when_some_row_has_the_figure():
    import matplotlib.pyplot as plt

    fig = pareto_figure(build_rows(batched()))
    assert not any("batch 1" in xlabel for _, xlabel in panels(fig))
    plt.close(fig)

    fig = pareto_figure(build_rows(batched(), batch1=batch1()))
    b1 = {task: ax for (task, xlabel), ax in panels(fig).items() if "batch 1" in xlabel}
    assert set(b1) == {"routed_demo", COT}
    # the decode-bound task's panel: llm-only and r2r at their batch-1 latencies, not the control
    xs = sorted(x for line in b1[COT].lines for x in line.get_xdata() if line.get_marker() == "o")
    assert xs == [0.8, 2.0]
    assert [t.get_text() for t in b1["routed_demo"].texts] == [
        "not measured at batch 1 on this task"
    ]
    plt.close(fig)


def test_the_demo_scores_the_decode_bound_task_again_at_batch_1_on_a_subset():
    out = Path("runs/demo")
    first, second = demo_passes(out, list(DEMO_TASKS), None, 8)
    assert first.tasks == list(DEMO_TASKS) and first.base["batch_size"] == 8
    assert first.out == out and first.limit is None
    assert LATENCY_B1_TASK == COT and second.tasks == [COT]  # the decode-bound task only
    assert second.base == {"config": "demo", "batch_size": 1}
    assert second.out == out / "batch1" and second.limit == 16
    # the same configurations, so their labels pair each batch-1 cell with its row
    assert second.configs == first.configs == demo_configs()
    # a reduced demo reduces the subset too; a run without the decode-bound task has no such pass
    assert demo_passes(out, list(DEMO_TASKS), 3, 8)[1].limit == 3
    assert [p.tasks for p in demo_passes(out, ["routed_demo"], None, 8)] == [["routed_demo"]]


def test_the_leaderboard_command_reads_a_sweeps_batch1_cells(tmp_path):
    from lm_eval_routed.jobs.merge import main

    for folder, cells in ((tmp_path / "demo", batched()), (tmp_path / "demo" / "batch1", batch1())):
        for s in cells:
            path = folder / "runs" / s["label"].replace(" ", "_") / f"{s['task']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(s))
    assert main([str(tmp_path / "demo"), "--out", str(tmp_path / "board")]) == 0
    table = csv.DictReader(io.StringIO((tmp_path / "board" / "leaderboard.csv").read_text()))
    got = {
        (r["config"], r["task"]): (r["latency_b1_s"], r["speedup_b1_vs_llm_only"]) for r in table
    }
    assert got == {
        ("llm-only", "routed_demo"): ("", ""),
        ("r2r", "routed_demo"): ("", ""),
        ("llm-only", COT): ("2.0", "1.0"),
        ("r2r", COT): ("0.8", "2.5"),
        (batched()[4]["label"], COT): ("", ""),
    }
