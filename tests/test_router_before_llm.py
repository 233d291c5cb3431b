"""A router checkpoint that does not fit the SLM is refused as soon as the SLM is loaded, before the
LLM (minutes for a large one), also where its sizes cannot be read beforehand (a hub id)."""

from __future__ import annotations

import pytest
from helpers import char_tokenizer, tiny_llama

from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import runtime
from lm_eval_routed.paths import router_ckpts_dir


@pytest.fixture
def hub_models(monkeypatch):
    """``hub/slm`` and ``hub/llm`` load as tiny models (hidden 64); the refs loaded, in order."""
    loaded: list[str] = []

    def load(ref, *a, **k):
        loaded.append(ref)
        return tiny_llama(1 if ref == "hub/slm" else 2, seed=len(loaded)).eval(), char_tokenizer()

    monkeypatch.setattr(runtime, "load_model", load)
    monkeypatch.setattr(runtime, "config_vocab_size", lambda *a, **k: None)  # no hub here
    return loaded


@pytest.mark.parametrize("kind", ["r2r", "citer"])
def test_a_checkpoint_of_another_hidden_size_stops_before_the_llm_loads(hub_models, kind):
    # the demo checkpoints read SmolLM2's 576-wide hidden state; this SLM's is 64 wide
    cfg = load_config(
        {
            "slm": "hub/slm",
            "llm": "hub/llm",
            "router": kind,
            "router_ckpt": str(router_ckpts_dir() / f"demo-{kind}"),
            "cost_slm": "0:0",
            "cost_llm": "0:0",
        }
    )
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(cfg)
    assert "\n" not in str(err.value)
    assert hub_models == ["hub/slm"]


def test_a_fitting_router_is_built_once_over_the_loaded_pair(hub_models):
    cfg = load_config(
        {
            "slm": "hub/slm",
            "llm": "hub/llm",
            "router": "random",
            "cost_slm": "0:0",
            "cost_llm": "0:0",
        }
    )
    rt = runtime.build_runtime(cfg)
    assert hub_models == ["hub/slm", "hub/llm"]
    assert rt.decoder.router is rt.router and rt.router.name == "random"
