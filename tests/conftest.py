"""Shared fixtures: a character tokenizer and a pair of tiny random Llama models that share it."""

from __future__ import annotations

import pytest
import torch
from helpers import char_tokenizer, tiny_llama

from lm_eval_routed.config_args import load_config
from lm_eval_routed.loading.runtime import build_runtime

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="session")
def pair():
    """(slm, llm): 1 and 3 layers, same vocabulary, different weights."""
    return tiny_llama(1, seed=1), tiny_llama(3, seed=2)


@pytest.fixture
def make_runtime(pair, tokenizer):
    """Build a RoutedRuntime over the tiny pair from model_args-style keys."""

    def build(**args):
        cfg = load_config({"cost_slm": "0.001:0.0001", "cost_llm": "0.01:0.001", **args})
        return build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tokenizer)

    return build


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any model's weights are loaded."""
    from lm_eval_routed.loading import runtime

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the mistake was refused")

    monkeypatch.setattr(runtime, "load_model", refuse)
