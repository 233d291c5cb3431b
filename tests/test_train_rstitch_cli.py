"""`lm-eval-routed train rstitch-plus` run as a user runs it: saved models named in --model-args, a JSONL
file, a checker named on the command line, a work folder that resumes; and every mistake refused in
one line before any model loads."""

from __future__ import annotations

import json

import pytest
from saved_pair import near_pair, save

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.loading import latency_model
from lm_eval_routed.loading.runtime import build_runtime
from lm_eval_routed.training.cli import main

PROMPTS = ["Q: 1+1?\nA:", "Q: hi\nA:", "abc ", "xyz ", "Say yes. ", "Q: 7*6?\nA:"]


def parity(text: str, row: dict) -> bool:
    """A checker that depends on the rollout: both outcomes occur on random models."""
    return len(text) % 2 == 0


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    slm, llm = near_pair()
    return save(tmp_path_factory.mktemp("pair"), {"slm": slm, "llm": llm})


def _argv(folders, data, workdir, out, *extra) -> list[str]:
    return [
        "rstitch-plus",
        "--model-args",
        f"slm={folders['slm']},llm={folders['llm']},dtype=float32,device=cpu",
        "--data",
        str(data),
        "--checker",
        "test_train_rstitch_cli:parity",
        "--no-chat",
        "--workdir",
        str(workdir),
        "--out",
        str(out),
        "--threshold",
        "0.5",
        "--group",
        "4",
        "--prompts-per-step",
        "3",
        "--max-new-tokens",
        "10",
        "--width",
        "8",
        "--init-switch",
        "0.5",
        *extra,
    ]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": "x"}) + "\n" for p in PROMPTS))
    return path


def test_a_run_fits_latency_trains_resumes_and_writes_a_checkpoint(folders, data, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "ckpt"
    assert main(_argv(folders, data, work, out, "--steps", "1")) == 0
    capsys.readouterr()
    # the latency model was fitted as the first step, on the run's engines
    fitted = latency_model.load(work / "latency.json")
    assert fitted.llm.d_decode > 0 and fitted.measured["llm"] == folders["llm"]
    assert main(_argv(folders, data, work, out, "--steps", "2")) == 0  # resumes at step 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 1 and summary["checkpoint"] == str(out)
    steps = [json.loads(x)["step"] for x in (work / "log.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "rstitch-plus" and config["slm"] == folders["slm"]
    assert (out / "latency.json").is_file() and (out / "training_log.jsonl").is_file()
    cfg = load_config(
        {
            "slm": folders["slm"],
            "llm": folders["llm"],
            "router": "rstitch-plus",
            "router_ckpt": str(out),
            "latency_model": str(out / "latency.json"),
        }
    )
    result = build_runtime(cfg).generate([GenRequest([5, 6, 7], 6)])[0]
    assert result.record.modeled_latency_s > 0


@pytest.mark.parametrize(
    "change, needle",
    [
        (("--group", "1"), "--group=1 must be at least 2"),
        (("--threshold", "2"), "--threshold=2.0 must be in [0, 1]"),
        (("--checker", "nowhere:fn"), "checker 'nowhere:fn' not found"),
        (("--data", "missing.jsonl"), "does not exist"),
        (("--prompt-field", "question"), "has no field 'question'"),
        (("--latency", "absent.json"), "latency model absent.json: no such file"),
        (("--model-args", "dtype=float65"), "dtype"),
    ],
)
def test_mistakes_are_one_line_before_any_model_loads(
    folders, data, tmp_path, capsys, no_loading, change, needle
):
    argv = _argv(folders, data, tmp_path / "w", tmp_path / "o", "--steps", "1")
    flag, value = change
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "content, needle",
    [
        ("", "holds no rows"),
        ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2 is not valid JSON"),
        ('{"prompt": "a"}\n["b"]\n', "line 2 is a JSON list, not an object"),
        ('{"prompt": "a"}\n{"text": "b"}\n', "row 2 has no field 'prompt'"),
    ],
)
def test_broken_data_is_one_line_before_any_model_loads(
    folders, tmp_path, capsys, no_loading, content, needle
):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    assert main(_argv(folders, data, tmp_path / "w", tmp_path / "o", "--steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def raises(text: str, row: dict) -> bool:
    """A checker that breaks on the rollouts' texts."""
    raise KeyError("answer_key")


def test_a_checker_that_raises_stops_the_run_in_one_line(folders, data, tmp_path, capsys):
    work = tmp_path / "w"
    argv = _argv(folders, data, work, tmp_path / "o", "--steps", "2")
    argv[argv.index("--checker") + 1] = "test_train_rstitch_cli:raises"
    assert main(argv) == 2
    err = capsys.readouterr().err  # progress bars share it with the error
    said = [line for line in err.splitlines() if "lm-eval-routed train rstitch-plus:" in line]
    assert len(said) == 1 and "the checker raises raised KeyError" in said[0], err
    assert "Traceback" not in err
    assert not (work / "state.safetensors").exists()  # no step finished, none recorded


def test_a_work_folder_of_other_settings_is_refused(folders, data, tmp_path, capsys, no_loading):
    work = tmp_path / "w"
    work.mkdir()
    settings = {"command": "rstitch-plus", "lam": 0.7}
    (work / "settings.json").write_text(json.dumps(settings))
    assert main(_argv(folders, data, work, tmp_path / "o", "--lam", "0.2")) == 2
    err = capsys.readouterr().err.strip()
    assert "lam=0.7" in err and len(err.splitlines()) == 1
