"""Bad input, as a careless user gives it: every mistake is one line naming what is wrong and the fix,
raised before any model loads where it can be seen without one, never a traceback or a silent default.
(Files a user hands in, config YAMLs, router checkpoints and model folders: test_bad_files.py; sweep
matrices: test_bad_matrix.py; task data: test_task_data.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import one_line, write_workspace
from lm_eval.api.instance import Instance

from lm_eval_routed.adapters.lm_eval_model import RoutedLM
from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import runtime


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("bad_input"))


# -- model_args ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"threshold": ""}, "threshold= is empty; give it a value or leave threshold out"),
        ({"name": " "}, "name= is empty"),
        ({"router": "entropy", "threshold": "nan"}, "threshold='nan' is not a finite number"),
        ({"router": "entropy-token", "threshold": "inf"}, "threshold='inf' is not a finite"),
        ({"router": "entropy", "threshold": float("nan")}, "threshold=nan is not a finite"),
        ({"router": "random", "p": "nan"}, "p='nan' is not a finite number"),
        ({"cost_llm": "nan:nan"}, "cost_llm='nan:nan': both seconds must be finite numbers"),
        ({"cost_slm": "0.1:inf"}, "cost_slm='0.1:inf': both seconds must be finite"),
        ({"cost_router": "-inf"}, "cost_router='-inf' is not a finite number"),
        ({"device": "cuda:abc"}, "device='cuda:abc' is not supported; use auto, cpu, cuda[:N]"),
        ({"device": "cuda:"}, "device='cuda:' is not supported"),
        ({"device": "cpu:0:1"}, "device='cpu:0:1' is not supported"),
        ({"device": "cudaX"}, "device='cudaX' is not supported"),
        ({"max_length": "0"}, "max_length=0 must be at least 2"),
        ({"max_length": "-8"}, "max_length=-8 must be at least 2"),
        ({"max_length": "1"}, "max_length=1 must be at least 2"),
        ({"batch_size": "abc"}, "batch_size='abc' is not a valid int"),
        ({"batch_size": "2.5"}, "batch_size='2.5' is not a valid int"),
        ({"max_gen_toks": "-1"}, "max_gen_toks=-1 must be a positive integer"),
        ({"router": "speculative", "gamma": "0"}, "gamma=0 must be a positive integer"),
        ({"router": "llm-only", "llm_lookahead": "maybe"}, "llm_lookahead='maybe' is not a valid"),
        ({"router_hidden": "64"}, "unknown key 'router_hidden'"),
        ({"router_device": "cpu"}, "unknown key 'router_device'"),
    ],
)
def test_bad_model_args_are_one_line(args, needle):
    with pytest.raises(ConfigError) as err:
        load_config(args)
    one_line(err, needle)


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            {"router": "random", "threshold": "0.5"},
            "threshold=0.5 is not read by router=random, which reads only p, guess_ahead; drop "
            "threshold or choose a router that reads it (citer, entropy, entropy-token, r2r, rstitch-plus)",
        ),
        (
            {"router": "llm-only", "p": "0.2"},
            "p=0.2 is not read by router=llm-only, which reads only guess_ahead",
        ),
        ({"router": "slm-only", "threshold": "0.1"}, "not read by router=slm-only"),
        (
            {"router": "entropy", "gamma": "8"},
            "gamma=8 is not read by router=entropy, which reads ",
        ),
        ({"router": "entropy", "p": "0.3"}, "p=0.3 is not read by router=entropy"),
        ({"router": "entropy", "guess_ahead": "4"}, "guess_ahead=4 is not read by router=entropy"),
        ({"router": "speculative", "guess_ahead": "2"}, "reads only gamma"),
        ({"router": "speculative", "threshold": "0.3"}, "reads only gamma"),
        ({"router": "entropy", "router_ckpt": "demo-r2r"}, "router_ckpt=demo-r2r is not read"),
        ({"router": "citer", "router_ckpt": "demo-citer", "gamma": "2"}, "reads only router_ckpt"),
    ],
)
def test_a_knob_the_router_does_not_read_is_refused(args, needle):
    with pytest.raises(ConfigError) as err:
        load_config(args)
    one_line(err, needle)


def test_knobs_the_router_reads_pass_and_none_means_default():
    assert load_config({"router": "random", "p": "0.3"}).p == 0.3
    assert load_config({"router": "entropy", "threshold": "0.2"}).threshold == 0.2
    assert load_config({"router": "random", "threshold": "none"}).threshold is None
    assert load_config({"router": "speculative", "gamma": "2"}).gamma == 2
    # a knob at its default changes nothing, so nothing is ignored: accepted
    assert load_config({"router": "entropy", "p": "0.1", "guess_ahead": "0"}).router == "entropy"


def test_a_preset_knob_is_dropped_when_another_router_is_chosen():
    # config=r2r sets threshold 0.406 for router r2r; a baseline on the same pair does not read it
    cfg = load_config({"config": "r2r", "router": "llm-only"})
    assert (cfg.router, cfg.threshold, cfg.label) == ("llm-only", None, "llm-only")
    assert load_config({"config": "rstitch"}).threshold == 0.1  # its own router keeps it


def test_a_config_built_in_code_with_an_unread_knob_is_refused_before_loading(no_loading):
    for cfg, needle in (
        (
            RoutedConfig(router="random", threshold=0.5),
            "threshold=0.5 is not read by router=random",
        ),
        (RoutedConfig(router="entropy", p=0.3), "p=0.3 is not read by router=entropy"),
    ):
        with pytest.raises(ConfigError) as err:
            runtime.build_runtime(cfg)
        one_line(err, needle)


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            {"router": "citer", "router_ckpt": "demo-citer", "threshold": "1.5"},
            "out of range for router=citer",
        ),
        ({"router": "citer", "router_ckpt": "demo-citer", "threshold": "-0.1"}, "between 0 and 1"),
        (
            {"router": "r2r", "router_ckpt": "demo-r2r", "threshold": "2"},
            "out of range for router=r2r",
        ),
        ({"router": "entropy", "threshold": "1.5"}, "out of range for router=entropy"),
        ({"router": "entropy-token", "threshold": "-1"}, "must be >= 0 for router=entropy-token"),
    ],
)
def test_threshold_ranges_are_refused_before_loading(no_loading, args, needle):
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(load_config(args))
    one_line(err, needle)


def test_a_cuda_device_that_is_not_there():
    from lm_eval_routed.loading.models import resolve_device

    with pytest.raises(ConfigError) as err:
        resolve_device("cuda:99")
    needle = "only" if torch.cuda.is_available() else "no CUDA device is visible"
    one_line(err, needle)


# -- generation kwargs (lm-eval's --gen_kwargs and the task's generation_kwargs) -------------------


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (
            {"max_gen_toks": -1},
            "max_gen_toks=-1 (from --gen_kwargs or the task's generation_kwargs) must be at least 1",
        ),
        ({"max_gen_toks": 0}, "max_gen_toks=0"),
        ({"max_gen_toks": -1.0}, "max_gen_toks=-1 (from --gen_kwargs"),  # as lm-eval parses it
        (
            {"max_gen_toks": 2.5},
            "max_gen_toks=2.5 (from --gen_kwargs or the task's generation_kwargs) must be a whole number",
        ),
        ({"max_gen_toks": "abc"}, "max_gen_toks='abc'"),
        ({"max_gen_toks": True}, "max_gen_toks=True"),
        ({"max_gen_toks": math.inf}, "max_gen_toks=inf"),
        ({"temperature": -0.5}, "temperature=-0.5"),
        ({"temperature": math.nan}, "temperature=nan"),
        ({"top_p": 0}, "top_p=0"),
        (
            {"top_k": -1},
            "top_k=-1 (from --gen_kwargs or the task's generation_kwargs) must be a whole",
        ),
        ({"top_k": 2.5}, "top_k=2.5"),
        ({"top_k": "ten"}, "top_k='ten'"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"until": 5}, "until=5"),
        ({"until": ["\n", 3]}, "must be a string or a list of strings"),
    ],
)
def test_bad_generation_kwargs_stop_before_any_generation(
    pair, tokenizer, monkeypatch, kwargs, needle
):
    cfg = load_config({"cost_slm": "0:0", "cost_llm": "0:0"})
    lm = RoutedLM.from_runtime(
        runtime.build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tokenizer)
    )
    monkeypatch.setattr(lm.runtime, "generate", lambda *a, **k: pytest.fail("generated"))
    good = Instance("generate_until", {}, ("Q: 1+1\nA:", {"max_gen_toks": 4}), 0, ("t", 0, 1))
    bad = Instance("generate_until", {}, ("Q: 2+2\nA:", kwargs), 0, ("t", 1, 1))
    with pytest.raises(ConfigError) as err:
        lm.generate_until([good, bad], disable_tqdm=True)
    one_line(err, needle)


def test_a_budget_that_leaves_no_room_for_the_prompt_stops_before_generation(
    pair, tokenizer, monkeypatch
):
    cfg = load_config(
        {"max_length": "16", "max_gen_toks": "8", "cost_slm": "0:0", "cost_llm": "0:0"}
    )
    lm = RoutedLM.from_runtime(
        runtime.build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tokenizer)
    )
    monkeypatch.setattr(lm.runtime, "generate", lambda *a, **k: pytest.fail("generated"))
    req = Instance("generate_until", {}, ("Q: 1+1\nA:", {"max_gen_toks": 16}), 0, ("t", 0, 1))
    with pytest.raises(ConfigError) as err:
        lm.generate_until([req], disable_tqdm=True)
    one_line(err, "max_gen_toks=16 leaves no room for a prompt in max_length=16")


@pytest.mark.parametrize(
    "given,model_arg,needle",
    [
        ("abc", None, "--batch_size 'abc' is not a whole number of rows"),
        ("2.5", None, "--batch_size '2.5'"),
        (1, "x", "batch_size='x' is not a whole number of rows"),
    ],
)
def test_lm_eval_batch_size_flag(given, model_arg, needle):
    from lm_eval_routed.adapters.lm_eval_model import _batch_size

    with pytest.raises(ConfigError) as err:
        _batch_size(given, model_arg)
    one_line(err, needle)


# -- how a ConfigError reaches the user of the lm_eval CLI ------------------------------------------


def test_the_lm_eval_cli_wrapper_prints_one_line_and_exits_2(capsys):
    from lm_eval_routed.adapters.plugin import one_line_config_errors

    def task_build():
        try:
            raise ConfigError("data.jsonl line 3: field 'answer' is missing or null")
        except ConfigError as err:  # lm-eval re-raising our error as another type
            raise RuntimeError("task failed to build") from err

    with pytest.raises(SystemExit) as done:
        one_line_config_errors(task_build)()
    assert done.value.code == 2
    assert (
        capsys.readouterr().err == "lm_eval: data.jsonl line 3: field 'answer' is missing or null\n"
    )
    with pytest.raises(KeyError):  # anything else keeps its traceback
        one_line_config_errors(lambda: {}["x"])()


def test_lm_evals_cli_is_wrapped_once_imported():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lm_eval._cli.harness import HarnessCLI\n"
            "print(getattr(HarnessCLI.execute, '_one_line_errors', False))",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def _lm_eval(*args, env=None, cwd=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "lm_eval", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def _assert_one_line(out, needle):
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("lm_eval: ")]
    assert len(lines) == 1 and needle in lines[0], out.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra,needle",
    [
        (
            ["--model_args", "router=random,threshold=0.5"],
            "threshold=0.5 is not read by router=random",
        ),
        (
            ["--model_args", "router=entropy", "--batch_size", "abc"],
            "--batch_size 'abc' is not a whole",
        ),
    ],
)
def test_lm_eval_cli_model_args_mistakes_are_one_line(extra, needle):
    _assert_one_line(_lm_eval("--model", "routed", "--tasks", "routed_demo", *extra), needle)


@pytest.mark.slow
def test_lm_eval_cli_task_data_and_gen_kwargs_mistakes_are_one_line(workspace, tmp_path):
    model = f"slm={workspace / 'slm'},llm={workspace / 'llm'},cost_slm=0:0,cost_llm=0:0"
    # a problem without its contest_date is named as such, not reported as an empty window
    tests = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}])
    row = {"question_content": "Add.", "public_test_cases": tests, "contest_date": "2024-09-01"}
    lines = [row, {k: v for k, v in row.items() if k != "contest_date"}]
    (tmp_path / "livecodebench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = _lm_eval(
        "--model",
        "routed",
        "--model_args",
        model,
        "--tasks",
        "routed_livecodebench",
        "--limit",
        "1",
        env={"ROUTED_TASKS_DATA": str(tmp_path)},
    )
    _assert_one_line(
        out,
        f"{tmp_path / 'livecodebench.jsonl'} line 2: field 'contest_date' is missing or null",
    )
    out = _lm_eval(
        "--model",
        "routed",
        "--model_args",
        model,
        "--tasks",
        "tiny_routed",
        "--limit",
        "1",
        "--include_path",
        str(workspace / "tasks"),
        "--gen_kwargs",
        "max_gen_toks=-1",
    )
    _assert_one_line(out, "max_gen_toks=-1 (from --gen_kwargs")


def test_evalplus_refuses_a_budget_without_room_before_loading(monkeypatch, no_loading):
    import evalplus.provider  # noqa: F401  (registers `routed` first, as EvalPlus's CLI does)

    from lm_eval_routed.adapters.evalplus_backend import RoutedDecoder

    monkeypatch.setenv("ROUTED_MODEL_ARGS", "max_length=100")  # demo's max_gen_toks is 256
    with pytest.raises(ConfigError) as err:
        RoutedDecoder(name="demo", dataset="humaneval")
    one_line(err, "max_length=100 leaves no room for a prompt beside max_gen_toks=256")
