"""User-facing configuration: every mistake is one line that names the key and the fix."""

from __future__ import annotations

import pytest

from lm_eval_routed.config_args import load_config, parse_arg_string, preset_names
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.routers.base import make_router


def test_explicit_args_override_preset(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("slm: a\nllm: b\nrouter: entropy\nthreshold: 0.2\n")
    cfg = load_config({"config": str(cfg_file), "threshold": "0.3"})
    assert (cfg.slm, cfg.llm, cfg.router, cfg.threshold) == ("a", "b", "entropy", 0.3)


def test_paper_presets_ship():
    assert {"r2r", "rstitch", "citer"} <= set(preset_names())
    assert load_config({"config": "r2r"}).llm.endswith("R1-Distill-Qwen-32B")


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"tempreature": "1"}, "unknown key 'tempreature'"),
        ({"router": "random", "p": "1.5"}, "p=1.5 is out of range"),
        ({"batch_size": "zero"}, "batch_size='zero' is not a valid int"),
        ({"dtype": "int4"}, "choose one of: auto, float32"),
        ({"cost_llm": "0.1"}, "fixed_s:per_token_s"),
        ({"cost_slm": "-0.01:0"}, "cost_slm=-0.01:0: seconds cannot be negative"),
        ({"cost_router": "-1"}, "cost_router=-1: seconds cannot be negative"),
        ({"config": "no-such-preset"}, "neither a YAML file nor a preset"),
        ({"device": "tpu"}, "device='tpu' is not supported"),
    ],
)
def test_bad_values_fail_with_one_line(args, needle):
    with pytest.raises(ConfigError) as err:
        load_config(args)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_router_lists_choices():
    with pytest.raises(ValueError, match="choose one of: .*entropy.*slm-only"):
        make_router("nope", load_config({}))


def test_arg_string_form():
    assert parse_arg_string("router=random, p=0.2,") == {"router": "random", "p": "0.2"}
    with pytest.raises(ConfigError, match="no '='"):
        parse_arg_string("router")


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"router": "nope"}, "unknown router 'nope'"),
        ({"router": "r2r"}, "router=r2r needs router_ckpt="),
        ({"router": "citer", "router_ckpt": "no/such/folder"}, "router_ckpt='no/such/folder' not"),
        (
            {"router": "citer", "router_ckpt": "demo-r2r"},
            "is a 'r2r' router checkpoint, not 'citer'",
        ),
        ({"router": "entropy", "threshold": "2"}, "out of range for router=entropy"),
    ],
)
def test_router_mistakes_fail_before_models_load(monkeypatch, args, needle):
    from lm_eval_routed.loading import runtime

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the router was checked")

    monkeypatch.setattr(runtime, "load_model", no_loading)
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(load_config(args))
    assert needle in str(err.value) and "\n" not in str(err.value)
