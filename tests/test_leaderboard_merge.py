"""`lm-eval-routed leaderboard RUN_OR_SWEEP...`: sweeps and lm-eval runs in one leaderboard, each
(configuration, task) once, and one label under two settings refused in one line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from run_fixtures import P_LLM, P_SLM, Sample, write_lm_eval

from lm_eval_routed.cli import main
from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.merge import merge_runs
from lm_eval_routed.jobs.summaries import config_dict


def write_cell(out: Path, args: dict, task: str, acc: float, limit: int | None = None) -> Path:
    """A finished cell of a sweep at ``out``, as the sweep writes it."""
    cfg = load_config(args)
    folder = out / "runs" / cfg.label.replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "label": cfg.label,
        "task": task,
        "config": config_dict(cfg),
        "metrics": {"exact_match,none": acc, "exact_match_stderr,none": 0.1},
        "n_samples": 4,
        "limit": limit,
        "accounting": {"llm_share": 0.5, "activated_params": 8e7, "latency_s": 0.2},
    }
    (folder / f"{task}.json").write_text(json.dumps(summary))
    (folder / f"{task}.samples.jsonl").write_text("")
    return folder


KEYS = ("config", "task", "accuracy", "activated_params", "n")


def rows(out: Path) -> list[dict]:
    with (out / "leaderboard.csv").open() as fh:
        return [{k: r[k] for k in KEYS} for r in csv.DictReader(fh)]


def row(*values: str) -> dict:
    return dict(zip(KEYS, values))


def test_sweeps_and_an_lm_eval_run_make_one_leaderboard(tmp_path, capsys):
    a, b = tmp_path / "sweep_a", tmp_path / "sweep_b"
    write_cell(a, {"router": "llm-only"}, "t", 0.75)
    write_cell(a, {"router": "random", "p": 0.5}, "t", 0.5)
    write_cell(b, {"router": "llm-only"}, "u", 0.25)
    # an lm-eval run of a configuration no sweep holds: two docs, one written all by the LLM, one
    # half by each model; its accounting is the mean over those two records
    docs = [Sample(0, 1.0, ["a", "b"], llm=[0, 1]), Sample(1, 0.0, ["c", "d"], llm=[1])]
    lm_eval = write_lm_eval(tmp_path / "lm", docs, task="t", model_args="router=slm-only,name=mine")
    out = tmp_path / "board"
    assert main(["leaderboard", str(a), str(b), str(lm_eval), "--out", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    mean_params = (P_LLM + (P_SLM + P_LLM) / 2) / 2
    assert sorted(rows(out), key=lambda r: (r["task"], r["config"])) == [
        row("llm-only", "t", "0.75", "80000000.0", "4"),
        row("mine", "t", "0.5", str(mean_params), "2"),
        row("random p=0.5", "t", "0.5", "80000000.0", "4"),
        row("llm-only", "u", "0.25", "80000000.0", "4"),
    ]
    for name in ("leaderboard.md", "leaderboard.html", "pareto.png"):
        assert (out / name).stat().st_size > 0


def test_one_configuration_on_one_task_from_two_places_is_counted_once(tmp_path):
    a = tmp_path / "a"
    write_cell(a, {"router": "llm-only"}, "t", 0.75)
    write_cell(a, {"router": "slm-only"}, "t", 0.25)
    b = tmp_path / "b"
    shutil.copytree(a / "runs" / "llm-only", b / "runs" / "llm-only")  # a cell copied elsewhere
    # the lm-eval run of the same configuration (same settings: the defaults, no limit)
    lm_eval = write_lm_eval(
        tmp_path / "lm", [Sample(0, 1.0, ["a"], llm=[0])], model_args="router=llm-only"
    )
    summaries = merge_runs([a, b, a, lm_eval])
    assert sorted((s["label"], s["task"]) for s in summaries) == [
        ("llm-only", "t"),
        ("slm-only", "t"),
    ]
    # the first place it was found is the one kept
    assert (
        next(s for s in summaries if s["label"] == "llm-only")["metrics"]["exact_match,none"]
        == 0.75
    )


@pytest.mark.parametrize(
    "other,key",
    [
        ({"router": "entropy", "threshold": 0.5, "name": "mine"}, "threshold=0.3"),
        (
            {"router": "entropy", "threshold": 0.3, "name": "mine", "llm": "other/llm"},
            "llm='demo:llm'",
        ),
    ],
)
def test_one_label_under_different_settings_is_refused_in_one_line(tmp_path, other, key):
    write_cell(tmp_path / "a", {"router": "entropy", "threshold": 0.3, "name": "mine"}, "t", 0.5)
    write_cell(tmp_path / "b", other, "u", 0.5)  # another task: still the same label
    with pytest.raises(ConfigError) as err:
        merge_runs([tmp_path / "a", tmp_path / "b"])
    message = str(err.value)
    assert message.startswith(f"'mine' ran with {key} in {tmp_path / 'a'}") and "\n" not in message
    assert message.endswith("; give one another name= or leave it out")


def test_the_same_label_scored_at_another_limit_is_refused(tmp_path):
    write_cell(tmp_path / "a", {"router": "llm-only"}, "t", 0.5, limit=10)
    write_cell(tmp_path / "b", {"router": "llm-only"}, "t", 0.5, limit=None)
    with pytest.raises(ConfigError, match=r"'llm-only' ran with limit=10 in .* but limit=None in"):
        merge_runs([tmp_path / "a", tmp_path / "b"])


def test_a_plain_lm_eval_run_of_another_model_is_a_row_without_accounting(tmp_path):
    folder = write_lm_eval(tmp_path / "hf", [Sample(0, 1.0, ["a"])], model_args="pretrained=gpt2")
    results = next(folder.rglob("results_*.json"))
    data = json.loads(results.read_text())
    data["config"] = {"model": "hf", "model_args": "pretrained=gpt2", "limit": 1}
    results.write_text(json.dumps(data))
    for samples in folder.rglob("*.jsonl"):  # run without --log_samples: the results file alone
        samples.unlink()
    out = tmp_path / "board"
    assert main(["leaderboard", str(folder), "--out", str(out)]) == 0
    assert rows(out) == [row("pretrained=gpt2", "t", "1.0", "", "0")]
    assert (out / "pareto.png").stat().st_size > 0


@pytest.mark.parametrize("make", ["missing", "empty", "half"])
def test_what_holds_no_result_is_refused_in_one_line(tmp_path, capsys, make):
    path = tmp_path / "x"
    if make != "missing":
        path.mkdir()
    if make == "half":  # a cell still being written
        (path / "runs" / "llm-only").mkdir(parents=True)
        (path / "runs" / "llm-only" / "t.json").write_text('{"label": "llm-o')
    assert main(["leaderboard", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lm-eval-routed leaderboard: {path} ") and err.count("\n") == 1
    assert "give a sweep's output folder" in err
