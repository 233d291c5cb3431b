"""NativeEngine against HFEngine: the written-out Llama-family forward must give Hugging Face's logits
bit for bit on the CPU, for every family it claims, prepacked or not, on every attention layout."""

from __future__ import annotations

import copy
import gc
import logging
import weakref

import pytest
import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core import native
from lm_eval_routed.core.cpu_linear import holds_packed
from lm_eval_routed.core.engine import HFEngine
from lm_eval_routed.core.native import NativeEngine, checked_engine, unsupported
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.runtime import make_engine

SIZES = dict(
    vocab_size=98,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
    tie_word_embeddings=False,
)
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SIZES)),
    "llama-biases": lambda: LlamaForCausalLM(
        LlamaConfig(**SIZES, attention_bias=True, mlp_bias=True)
    ),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SIZES, sliding_window=None)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SIZES)),  # q/k/v biases
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**SIZES, head_dim=24)),  # per-head q/k norms
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [30, 31, 32, 33, 34], [40, 41, 42, 43]]


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    if family == "llama-biases":  # biases start at zero: make them matter
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
    return model


def same_calls(a: HFEngine, b: HFEngine) -> None:
    """Both engines through prefill, a ragged step (rows out of order, all logits), a dense step."""
    caches = [a.new_cache(4, 32), b.new_cache(4, 32)]
    n = [len(p) for p in PROMPTS]
    calls = [
        ([0, 1, 2, 3], [0, 0, 0, 0], PROMPTS, False),
        ([3, 1, 2], [n[3], n[1], n[2]], [[44], [23, 24, 25], [35, 36]], True),
        ([0, 1, 2, 3], [n[0], n[1] + 3, n[2] + 2, n[3] + 1], [[1]] * 4, False),
    ]
    for rows, held, tokens, all_logits in calls:
        x = a.forward(caches[0], rows, held, tokens, all_logits=all_logits)
        y = b.forward(caches[1], rows, held, tokens, all_logits=all_logits)
        assert torch.equal(x.logits, y.logits) and torch.equal(x.hidden, y.hidden)


@pytest.mark.parametrize("prepack", [False, True], ids=["plain", "prepacked"])
@pytest.mark.parametrize("gather", [False, True], ids=["per-row", "gathered"])
@pytest.mark.parametrize("family", FAMILIES)
def test_bitwise_the_hf_forward(family, gather, prepack):
    model = build(family)
    assert unsupported(model) is None
    hf = HFEngine(model, 98, gather=gather, prepack=prepack)
    engine, reason = checked_engine(model, 98, hf)
    assert reason is None and engine.gather == gather and engine.prepacked == prepack
    same_calls(engine, hf)


def test_unpacked_projections_read_the_models_weights_in_place():
    """Off the prepacked path nothing is copied and nothing of the model is replaced: each projection
    reads the model's own weight, and a second engine over the model shares the first one's stack."""
    model = build("llama")
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    first = NativeEngine(model, 98)
    attn = model.model.layers[0].self_attn
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    assert all(w is m.weight for w, m in zip(first.layers[0].qkv.weights, projections, strict=True))
    assert first.layers[0].qkv.stack.packed is None
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == ptrs
    assert NativeEngine(model, 98).layers[0].qkv.stack is first.layers[0].qkv.stack


def test_packed_stacks_stand_in_for_the_layers_copies_and_are_probed_once(monkeypatch):
    """Prepacked, the engine's packed stack stands in for the layers' own packed copies (no weight is
    packed twice); a second engine over the model while the first lives (a sweep's next cell) shares
    its packed copies and is not probed again; they are freed with the last engine holding them."""
    model = build("llama")
    probed = []
    real = native._probe
    monkeypatch.setattr(native, "_probe", lambda engine: probed.append(engine.kind) or real(engine))
    first = make_engine(model, 98)
    assert first.kind == "native" and probed == ["hf", "native"]
    attn = first.base.layers[0].self_attn  # the engine's own modules
    assert not any(holds_packed(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    assert holds_packed(attn.o_proj)  # packed on its first forward, in the probe
    second = make_engine(model, 98)
    assert second.kind == "native" and probed == ["hf", "native"]
    assert second.layers[0].qkv.stack is first.layers[0].qkv.stack
    o_proj = second.base.layers[0].self_attn.o_proj
    same_calls(second, first)
    assert o_proj.__dict__["_routed_packed"] is attn.o_proj.__dict__["_routed_packed"]
    stack = weakref.ref(first.layers[0].qkv.stack)
    del first, second, attn, o_proj
    gc.collect()
    assert stack() is None


def test_engines_over_a_copied_model():
    """Engines keep nothing in the model: deepcopy (oneDNN copies cannot be copied) works."""
    model = build("qwen2")
    engine = make_engine(model, 98)
    twin = copy.deepcopy(model)
    assert make_engine(twin, 98).kind == "native"
    same_calls(make_engine(twin, 98), engine)


def test_prepacked_stack_follows_a_changed_weight():
    """A weight written in place after the stack was packed: the next engine packs it again."""
    model = build("llama")
    old = NativeEngine(model, 98, prepack=True).layers[0].gate_up
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(2)
    fresh = NativeEngine(model, 98, prepack=True)
    assert fresh.layers[0].gate_up.stack is not old.stack
    same_calls(fresh, HFEngine(model, 98, prepack=True))


def test_other_architectures_run_on_hf(caplog):
    cfg = GemmaConfig(**{**SIZES, "head_dim": 16})
    model = GemmaForCausalLM(cfg).eval()
    assert "GemmaDecoderLayer is not a decoder layer of" in unsupported(model)
    with caplog.at_level(logging.INFO, logger="lm_eval_routed.loading.runtime"):
        assert make_engine(model, 98).kind == "hf"
    assert "runs on the hf engine" in caplog.text
    with pytest.raises(ConfigError, match="engine=native cannot run GemmaForCausalLM"):
        make_engine(model, 98, "native")


def test_a_disagreeing_native_forward_is_not_used(monkeypatch, caplog):
    """Should a transformers release change how a covered model computes, the probe catches it."""
    model = build("llama")
    real = native.rms_norm
    monkeypatch.setattr(native, "rms_norm", lambda x, norm: real(x, norm) * 1.001)
    engine, reason = checked_engine(model, 98, HFEngine(model, 98))
    assert engine is None and reason.startswith("logits differ by up to")
    with caplog.at_level(logging.WARNING, logger="lm_eval_routed.loading.runtime"):
        assert make_engine(model, 98).kind == "hf"
    assert "native engine disagrees" in caplog.text
    with pytest.raises(ConfigError, match="engine=native cannot run LlamaForCausalLM: logits"):
        make_engine(model, 98, "native")
    monkeypatch.setattr(native, "rms_norm", real)
    assert make_engine(model, 98).kind == "native"


def test_engine_choice_is_recorded(make_runtime):
    assert make_runtime().info()["routed"]["engine"] == {"slm": "native", "llm": "native"}
    assert make_runtime(engine="hf").info()["routed"]["engine"] == {"slm": "hf", "llm": "hf"}
    with pytest.raises(ConfigError, match="engine='fast' is not allowed; choose one of: auto"):
        load_config({"engine": "fast"})


@pytest.mark.parametrize(
    "router,extra",
    [("random", {"p": "0.3"}), ("entropy", {"threshold": "0.8"}), ("speculative", {})],
)
def test_routed_runs_are_the_same_on_either_engine(make_runtime, tokenizer, router, extra):
    """The engine changes the time a run takes, not what it writes or how it is accounted."""
    reqs = [
        GenRequest(prompt_ids=tokenizer(p)["input_ids"], max_new_tokens=16, seed=i)
        for i, p in enumerate(["The cat sat", "2+2=", "Once upon a time", "x", "abcabc"])
    ]
    runs = {
        engine: make_runtime(router=router, batch_size=4, engine=engine, **extra).generate(reqs)
        for engine in ("native", "hf")
    }
    assert [r.token_ids for r in runs["native"]] == [r.token_ids for r in runs["hf"]]
    fields = ("llm_positions", "llm_forward_tokens", "slm_forward_tokens", "llm_calls")
    for a, b in zip(runs["native"], runs["hf"]):
        assert all(getattr(a.record, f) == getattr(b.record, f) for f in fields)


def test_off_the_cpu_the_probe_allows_rounding_not_errors():
    """Other devices' kernels may round stacked products differently: within 5% of the logits'
    largest magnitude passes, a wrong forward (here 10% off) does not; the CPU asks for equality."""
    want = [torch.tensor([[4.0, -2.0, 1.0]])]
    cuda = torch.device("cuda")
    assert native._differ([want[0] + 0.1], want, cuda) is None
    assert native._differ([want[0] * 1.1], want, cuda) == (
        "logits differ by up to 10.0% of their largest magnitude"
    )
    assert native._differ([want[0] + 1e-6], want, torch.device("cpu")).startswith("logits differ")
