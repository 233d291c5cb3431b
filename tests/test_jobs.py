"""Sweeps resume instead of recomputing; the leaderboard reads them into tables and a plot."""

from __future__ import annotations

import json

import pytest
from helpers import write_workspace

from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs import cell as cellmod
from lm_eval_routed.jobs import summaries, sweep
from lm_eval_routed.jobs.leaderboard import build_rows, primary_metric, write_leaderboard


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("jobs"))


def base(ws):
    return {
        "slm": str(ws / "slm"),
        "llm": str(ws / "llm"),
        "cost_slm": "0.001:0.0001",
        "cost_llm": "0.01:0.001",
        "batch_size": 2,
    }


@pytest.mark.slow
def test_sweep_resumes_and_leaderboard_writes(workspace, tmp_path, monkeypatch):
    configs = [{"router": "llm-only"}, {"router": "random", "p": 0.5}]
    out = tmp_path / "sweep"
    first = sweep.run_sweep(
        configs,
        ["tiny_routed"],
        out,
        base=base(workspace),
        limit=3,
        include_path=str(workspace / "tasks"),
    )
    assert [s["label"] for s in first] == ["llm-only", "random p=0.5"]
    lines = (out / "runs" / "random_p=0.5" / "tiny_routed.samples.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["routed"][0]["tokens"] > 0 for x in lines)

    def must_not_run(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(sweep, "run_cell", must_not_run)
    again = sweep.run_sweep(
        configs,
        ["tiny_routed"],
        out,
        base=base(workspace),
        limit=3,
        include_path=str(workspace / "tasks"),
    )
    assert again == first
    # the same labels under other settings would be stale results: refused, not reused
    with pytest.raises(ConfigError, match=r"run with limit=3, not 2; write to another output"):
        sweep.run_sweep(configs, ["tiny_routed"], out, base=base(workspace), limit=2)
    renamed = [{"router": "random", "p": 0.2, "name": "random p=0.5"}]
    with pytest.raises(ConfigError, match=r"holds 'random p=0.5' run with p=0.5, not 0.2"):
        sweep.run_sweep(renamed, ["tiny_routed"], out, base=base(workspace), limit=3)

    text = write_leaderboard(first, tmp_path / "board")
    assert "random p=0.5" in text and (tmp_path / "board" / "pareto.png").stat().st_size > 1000
    rows = {r["config"]: r for r in build_rows(first)}
    acc = {s["label"]: s["accounting"] for s in first}
    for key in ("latency_s", "modeled_latency_s"):  # llm-only's over the row's, from the cells
        want = acc["llm-only"][key] / acc["random p=0.5"][key]
        assert rows["random p=0.5"][key.replace("latency_s", "speedup_vs_llm_only")] == want
    assert rows["llm-only"]["llm_share"] == 1.0
    for label, row in rows.items():  # exact match of each logged response, by hand
        cell = out / "runs" / label.replace(" ", "_") / "tiny_routed.samples.jsonl"
        lines = [json.loads(x) for x in cell.read_text().splitlines()]
        assert row["accuracy"] == sum(x["response"] == x["target"] for x in lines) / len(lines)
    assert rows["random p=0.5"]["activated_params"] < rows["llm-only"]["activated_params"]


def test_unknown_task_names_the_nearest(tmp_path):
    sweep.check_tasks(["routed_demo"], ["routed_demo", "routed_aime24"])
    (tmp_path / "mine.yaml").write_text("task: mine\n")
    sweep.check_tasks([str(tmp_path / "mine.yaml")], [])  # lm-eval takes a task YAML's path
    with pytest.raises(ConfigError, match="unknown task 'routed_dmeo'; nearest: routed_demo"):
        sweep.check_tasks(["routed_demo", "routed_dmeo"], ["routed_demo", "routed_aime24"])


@pytest.mark.slow
def test_sweep_refuses_an_unknown_task_before_loading(workspace, tmp_path, monkeypatch):
    def must_not_load(*a, **k):
        raise AssertionError("models were loaded for a sweep that cannot run")

    monkeypatch.setattr(cellmod, "build_runtime", must_not_load)
    with pytest.raises(ConfigError, match="unknown task 'tiny_rooted'; nearest: tiny_routed"):
        sweep.run_sweep(
            [{"router": "llm-only"}],
            ["tiny_rooted"],
            tmp_path,
            base=base(workspace),
            include_path=str(workspace / "tasks"),
        )


def test_sweep_refuses_two_configs_with_one_label(tmp_path):
    # same router and knob, another batch size: both would land in runs/llm-only/ and the second
    # would be skipped as done
    configs = [{"router": "llm-only"}, {"router": "llm-only", "batch_size": 4}]
    with pytest.raises(ConfigError, match="both labelled 'llm-only'; give each its own name="):
        sweep.run_sweep(configs, ["routed_demo"], tmp_path)
    named = [configs[0], {**configs[1], "name": "llm-only b=4"}]
    sweep.check_labels([load_config(c) for c in named])
    with pytest.raises(
        ConfigError, match="'llm-only' is listed twice; list each configuration once"
    ):
        sweep.check_labels([load_config(configs[0])] * 2)


def test_sweep_reloads_models_when_their_dtype_changes(make_runtime, monkeypatch):
    shared = make_runtime(router="llm-only")
    loaded = []
    monkeypatch.setattr(cellmod, "build_runtime", lambda cfg, **kw: loaded.append(kw) or shared)
    cellmod.runtime_for(shared.cfg.replace(router="random"), shared)
    cellmod.runtime_for(shared.cfg.replace(slm_dtype="bfloat16"), shared)
    assert [bool(kw) for kw in loaded] == [True, False]  # weights reused, then loaded afresh


@pytest.mark.parametrize("flag", ["--limit", "--batch-size"])
def test_demo_refuses_non_positive_counts(flag, capsys):
    from lm_eval_routed.jobs import demo

    with pytest.raises(SystemExit) as exit_:
        demo.main([flag, "0"])
    assert exit_.value.code == 2
    assert f"argument {flag}: '0' is not a positive integer" in capsys.readouterr().err


def test_join_keeps_every_repeat_of_a_sample():
    """A task with repeats samples several answers per doc: each one's accounting is kept and counted."""

    def record(doc: int, repeat: int, tokens: int, scored_by: str = "generate") -> dict:
        fields = dict.fromkeys(summaries.SUMMARY_FIELDS, 0.0) | {"tokens": tokens}
        return {**fields, "scored_by": scored_by, "key": {"doc_id": doc, "repeat": repeat}}

    records = [record(0, 1, 30), record(1, 0, 5), record(0, 0, 10), record(1, 0, 99, "llm")]
    samples = [{"doc_id": 0, "acc": 1.0}, {"doc_id": 1, "acc": 0.0}, {"doc_id": 2, "acc": 0.0}]
    rows = cellmod.join_samples(samples, records)
    assert [[r["tokens"] for r in row["routed"]] for row in rows] == [[10, 30], [5], []]
    assert "key" not in rows[0]["routed"][0] and rows[0]["metrics"] == {"acc": 1.0}
    # the run's summary averages generations: (10 + 30 + 5) / 3
    assert summaries.summarize([r for row in rows for r in row["routed"]])["tokens"] == 15.0


def test_primary_metric_picks_value_and_stderr():
    metrics = {
        "alias": "x",
        "sample_len": 3,
        "exact_match,strict": 0.5,
        "exact_match_stderr,strict": 0.1,
    }
    assert primary_metric(metrics) == ("exact_match", 0.5, 0.1)
    with pytest.raises(ValueError, match="no numeric metric"):
        primary_metric({"alias": "x"})
    with pytest.raises(ConfigError, match="metric 'acc' is not one of this task's: exact_match"):
        primary_metric(metrics, "acc")


@pytest.mark.parametrize(
    "text,needle",
    [
        ("configs: []\ntasks: [t]\n", "configs: must be a list of model_args mappings"),
        ("configs: [{router: llm-only}]\n", "tasks: must list at least one lm-eval task"),
        ("configs: [{router: llm-only}]\ntasks: t\nmodels: x\n", "unknown key 'models'"),
        ("configs: [{router: llm-only}\n", "is not valid YAML"),
        ("- a\n", "must hold a mapping with configs: and tasks:"),
    ],
)
def test_sweep_command_refuses_a_bad_matrix_in_one_line(tmp_path, capsys, text, needle):
    from lm_eval_routed.cli import main

    (tmp_path / "m.yaml").write_text(text)
    assert main(["sweep", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_sweep_command_runs_a_matrix_and_resumes(workspace, tmp_path, capsys):
    import yaml

    from lm_eval_routed.cli import main

    matrix = {
        "base": base(workspace),
        "configs": [{"router": "llm-only"}, {"router": "slm-only"}],
        "tasks": ["tiny_routed"],
        "include_path": str(workspace / "tasks"),
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(matrix))
    args = ["sweep", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o"), "--limit", "2"]
    assert main(args) == 0
    board = (tmp_path / "o" / "leaderboard.md").read_text()
    assert "| llm-only | tiny_routed |" in board and "| slm-only | tiny_routed |" in board
    assert "written to" in capsys.readouterr().out
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "runs").rglob("*.json")}
    assert len(done) == 2
    # a grown matrix runs only its new cell
    matrix["configs"].append({"router": "random", "p": 0.5})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(matrix))
    assert main(args) == 0
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "runs").rglob("*.json")}
    assert len(after) == 3 and all(after[p] == t for p, t in done.items())
    assert "| random p=0.5 | tiny_routed |" in (tmp_path / "o" / "leaderboard.md").read_text()


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path, capsys):
    """`lm-eval-routed demo` on three questions: real demo pair, every configuration, a leaderboard."""
    from lm_eval_routed.cli import main

    assert main(["demo", "--limit", "3", "--out", str(tmp_path)]) == 0
    board = (tmp_path / "leaderboard.md").read_text()
    for label in (
        "slm-only",
        "llm-only",
        "random p=0.15",
        "entropy t=0.15",
        "entropy t=0.02",
        "entropy-token",
        "speculative",
    ):
        assert label in board
    rows = {
        r["config"]: r for r in __import__("csv").DictReader((tmp_path / "leaderboard.csv").open())
    }
    assert (
        float(rows["slm-only"]["activated_params"])
        < float(rows["random p=0.4"]["activated_params"])
        < float(rows["llm-only"]["activated_params"])
    )
    for kind in ("r2r", "citer", "rstitch-plus"):  # each shipped router, and its control
        assert f"{kind} (demo ckpt)" in rows
        assert any(name.endswith(f"(share-matched to {kind} (demo ckpt))") for name in rows)
    assert (tmp_path / "pareto.png").stat().st_size > 1000
