"""Engines own what they build and change nothing they were handed: a model used by two runtimes, or
by plain ``generate`` afterwards, behaves as if loaded fresh."""

from __future__ import annotations

import torch
from helpers import tiny_llama

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.loading.runtime import build_runtime

COSTS = {"cost_slm": "0.001:0.0001", "cost_llm": "0.01:0.001"}


def fresh_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    return tiny_llama(1, seed=1), tiny_llama(3, seed=2)


def state(model: torch.nn.Module) -> dict:
    """Everything of a model a runtime could change: its tensors (which object, where, how often
    written), its config and attention choice, its modules' classes and attributes."""
    return {
        "tensors": {
            name: (id(t), t.data_ptr(), t._version, t.dtype, t.device, t.requires_grad)
            for name, t in model.state_dict(keep_vars=True).items()
        },
        "config": model.config.to_dict(),
        "attention": model.config._attn_implementation,
        "modules": [(name, type(m), sorted(vars(m))) for name, m in model.named_modules()],
        "training": model.training,
    }


def plain(model: torch.nn.Module, tokenizer) -> tuple[torch.Tensor, list[int]]:
    """The model's own logits over a prompt and its own greedy generate."""
    ids = torch.tensor([tokenizer("The cat sat")["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=1)
    return logits, out[0].tolist()


def test_two_runtimes_over_one_pair_then_plain_generate(tokenizer):
    slm, llm = fresh_pair()
    before = [state(slm), state(llm)]
    reqs = [GenRequest(tokenizer(p)["input_ids"], 16, seed=i) for i, p in enumerate(["ab", "x y"])]

    def runtime(**args):
        cfg = load_config({**COSTS, "batch_size": "2", **args})
        return build_runtime(cfg, slm=slm, llm=llm, tokenizer=tokenizer)

    native = runtime(router="random", p="0.4")
    want = [r.token_ids for r in native.generate(reqs)]
    other = runtime(router="entropy", threshold="0.8", engine="hf", prepack="false")
    other.generate(reqs)
    # the first runtime neither follows the last one built nor reads anything it changed
    assert native.info()["routed"]["prepacked"] and native.info()["routed"]["engine"]["llm"] == (
        "native"
    )
    assert not other.info()["routed"]["prepacked"]
    assert [r.token_ids for r in native.generate(reqs)] == want
    assert [state(slm), state(llm)] == before
    for used, new in zip((slm, llm), fresh_pair()):
        used_logits, used_tokens = plain(used, tokenizer)
        new_logits, new_tokens = plain(new, tokenizer)
        assert torch.equal(used_logits, new_logits) and used_tokens == new_tokens


def test_runtimes_over_one_model_share_the_engines_packed_weights(tokenizer):
    """Two runtimes over one pair hold one packed copy of each weight between them, not two."""
    slm, llm = fresh_pair()
    cfg = load_config({**COSTS, "router": "random", "p": "0.3"})
    first = build_runtime(cfg, slm=slm, llm=llm, tokenizer=tokenizer)
    second = build_runtime(cfg, slm=slm, llm=llm, tokenizer=tokenizer)
    pairs = (
        (first.decoder.slm, second.decoder.slm, slm),
        (first.decoder.llm, second.decoder.llm, llm),
    )
    for a, b, model in pairs:
        assert a.model is not b.model  # each engine owns its module tree, over the model's tensors
        held = {t.data_ptr() for t in model.state_dict().values()}
        assert {t.data_ptr() for t in a.model.state_dict().values()} == held
        assert a.layers[0].qkv.stack is b.layers[0].qkv.stack
        assert a.layers[0].qkv.stack.packed is not None
