"""What the sweep's launchers share, without Ray or models: a failed cell stops no other and is the
only one the next run retries; the progress line; what a cell asks Ray for; one line for a missing
Ray or a cell no node can hold."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import yaml

from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic
from lm_eval_routed.jobs import sweep
from lm_eval_routed.jobs.cell import Cell, cell_path
from lm_eval_routed.jobs.launch import Progress, SweepIncomplete
from lm_eval_routed.jobs.summaries import config_dict
from lm_eval_routed.jobs.sweep_ray import Resources, _check_fits, resources

PINNED = {"cost_slm": "0:0", "cost_llm": "0:0"}
CONFIGS = [{"router": "llm-only"}, {"router": "random", "p": 0.5}, {"router": "slm-only"}]


class FakeTasks:
    all_tasks = ["t"]

    def __init__(self, include_path=None):
        pass


@pytest.fixture
def fake_cells(monkeypatch):
    """Cells that write a summary, except those whose label is in ``failing``; ``ran`` lists labels."""
    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", FakeTasks)
    monkeypatch.setattr(sweep, "runtime_for", lambda cfg, shared: None)
    state = {"ran": [], "failing": set()}

    def run(cell, runtime, out, limit, task_manager):
        state["ran"].append(cell.cfg.label)
        if cell.cfg.label in state["failing"]:
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
        summary = {
            "label": cell.cfg.label,
            "task": cell.task,
            "config": config_dict(cell.cfg),
            "metrics": {"exact_match,none": 1.0},
            "accounting": {},
            "n_samples": 1,
            "limit": limit,
        }
        write_atomic(cell_path(out, cell), json.dumps(summary))

    monkeypatch.setattr(sweep, "run_cell", run)
    return state


def test_a_failed_cell_stops_no_other_and_the_rerun_retries_only_it(tmp_path, fake_cells, caplog):
    fake_cells["failing"].add("random p=0.5")
    with caplog.at_level(logging.INFO), pytest.raises(SweepIncomplete) as err:
        sweep.run_sweep(CONFIGS, ["t"], tmp_path, base=PINNED)
    assert fake_cells["ran"] == ["llm-only", "random p=0.5", "slm-only"]
    assert str(err.value) == (
        "1 of 3 cells failed; run the same command again to retry only those: "
        "random_p=0.5/t: RuntimeError: CUDA out of memory."
    )
    assert [s["label"] for s in err.value.summaries] == ["llm-only", "slm-only"]
    assert "[1/3 done, 0 running, 1 failed" in caplog.text

    fake_cells["failing"].clear()
    fake_cells["ran"].clear()
    summaries = sweep.run_sweep(CONFIGS, ["t"], tmp_path, base=PINNED)
    assert fake_cells["ran"] == ["random p=0.5"]
    assert [s["label"] for s in summaries] == ["llm-only", "random p=0.5", "slm-only"]


def test_the_sweep_command_writes_the_finished_cells_and_exits_1_on_a_failure(
    tmp_path, fake_cells, capsys
):
    from lm_eval_routed.cli import main

    fake_cells["failing"].add("slm-only")
    (tmp_path / "m.yaml").write_text(
        yaml.safe_dump({"base": PINNED, "configs": CONFIGS, "tasks": ["t"]})
    )
    assert main(["sweep", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("slm-only/t: RuntimeError: CUDA out of memory.") and "\n" not in err
    board = (tmp_path / "o" / "leaderboard.md").read_text()
    assert "| llm-only |" in board and "| random p=0.5 |" in board and "slm-only" not in board


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_counts_cells_and_estimates_the_time_left_from_the_pace_so_far():
    clock = Clock()
    p = Progress(5, clock=clock)
    p.start("a/t")
    p.start("b/t")
    assert p.line() == "[0/5 done, 2 running, 0 failed, time left unknown]"
    clock.now += 60
    p.finish("a/t")
    p.fail("b/t", "boom")
    p.start("b/t")  # a start heard after the end (Ray reports starts late): not counted
    clock.now += 60
    # one cell done in 120 s, three not yet ended: 360 s at that pace
    assert p.line() == "[1/5 done, 0 running, 1 failed, ~6m00s left]"
    assert p.time_left() == pytest.approx(360.0)


@pytest.mark.parametrize(
    "args,has_gpus,gpus",
    [
        ({"device": "cpu"}, True, 0),
        ({"device": "auto"}, False, 0),
        ({"device": "auto"}, True, 1),
        ({"device": "cuda"}, True, 1),
        ({"device": "cuda:2"}, True, 3),
        ({"device": "cuda:0", "llm_device_map": "auto", "max_memory": "0:20GiB;3:20GiB"}, True, 4),
        ({"device": "cuda:0", "llm_device_map": "model.layers.0:0;lm_head:1"}, True, 2),
        ({"device": "cpu", "llm_device_map": "cpu"}, True, 0),
    ],
)
def test_a_cell_asks_ray_for_the_gpus_its_device_settings_name(args, has_gpus, gpus):
    assert resources(load_config(args), has_gpus, cpus=3) == Resources(3, gpus)


def test_a_cell_no_node_can_hold_is_refused_in_one_line():
    cell = Cell(load_config({"router": "llm-only", "device": "cuda:1"}), "t")
    _check_fits(cell, Resources(1, 2), [{"CPU": 4}, {"CPU": 8, "GPU": 2}])  # the second holds it
    with pytest.raises(ConfigError) as err:
        _check_fits(cell, Resources(1, 2), [{"CPU": 16}, {"CPU": 8, "GPU": 1}])
    assert str(err.value).startswith("llm-only/t asks for 2 GPU(s) and 1 CPU(s), more than any")
    assert "the largest: 1 GPUs, 8 CPUs" in str(err.value) and "\n" not in str(err.value)


def test_launcher_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from lm_eval_routed.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setattr(sweep, "plan_sweep", lambda *a, **k: pytest.fail("planned without Ray"))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"configs": CONFIGS, "tasks": ["t"]}))
    code = main(["sweep", str(tmp_path / "m.yaml"), "--out", str(tmp_path), "--launcher", "ray"])
    assert code == 2
    assert capsys.readouterr().err == (
        "lm-eval-routed sweep: --launcher ray needs Ray, an optional extra: "
        "pip install 'lm-eval-routed[ray]'\n"
    )


@pytest.mark.parametrize("flag", [["--address", "auto"], ["--cpus-per-cell", "2"]])
def test_ray_options_without_the_ray_launcher_are_refused(tmp_path, capsys, flag):
    from lm_eval_routed.cli import main

    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"configs": CONFIGS, "tasks": ["t"]}))
    assert main(["sweep", str(tmp_path / "m.yaml"), *flag]) == 2
    assert capsys.readouterr().err == (
        f"lm-eval-routed sweep: {flag[0]} applies to --launcher ray only\n"
    )
