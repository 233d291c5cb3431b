"""Catch-up forwards are variable-length: no row is padded to the longest row's new tokens.

On the CPU the claim is checked on what the model is fed; the variable-length attention kernel
(core/varlen.py, flash-attn on CUDA) is checked for when it is chosen, and its plumbing (packed keys,
cumulative lengths, the end-aligned causal mask) against per-row attention through a stand-in with
its signature. flash-attn's own numerics are not tested here: it builds for CUDA only.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from helpers import tiny_llama

from lm_eval_routed.core import varlen
from lm_eval_routed.core.cache import RowKVCache, round_up
from lm_eval_routed.core.engine import HFEngine
from lm_eval_routed.core.native import NativeEngine

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [30, 31, 32, 33, 34], [40]]


@pytest.mark.parametrize("engine_class", [HFEngine, NativeEngine])
def test_a_catch_up_feeds_the_rows_tokens_not_rows_times_the_longest(engine_class, monkeypatch):
    engine = engine_class(tiny_llama(2, seed=4), 98)
    widths = []
    hidden = engine._hidden

    def spy(ids, plan, cache):
        widths.append(ids.shape[0])
        return hidden(ids, plan, cache)

    monkeypatch.setattr(engine, "_hidden", spy)
    cache = engine.new_cache(4, 32)
    engine.forward(cache, [0, 1, 2, 3], [0] * 4, PROMPTS)
    lengths = [len(p) for p in PROMPTS]
    catch_up = [[1], [2, 3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]  # 13 tokens, longest 7
    engine.forward(cache, [0, 1, 2, 3], lengths, catch_up)
    total = sum(map(len, catch_up))
    assert widths == [round_up(16, engine.pad_multiple), round_up(total, engine.pad_multiple)]
    assert widths[1] < len(catch_up) * max(map(len, catch_up))  # 16 < 4 x 7


def test_the_kernel_is_flash_attn_on_cuda_in_half_precision_only(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed: its import fails
    assert varlen.kernel(cuda, torch.bfloat16) is None
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_varlen_func = varlen.reference
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    assert varlen.kernel(cuda, torch.bfloat16) is varlen.reference
    assert varlen.kernel(cuda, torch.float16) is varlen.reference
    assert varlen.kernel(cuda, torch.float32) is None  # flash-attn takes half precision only
    assert varlen.kernel(cpu, torch.bfloat16) is None
    assert RowKVCache(2, 8, cpu, dtype=torch.bfloat16).varlen_fn is None  # chosen by the cache


def test_varlen_attention_gives_per_row_attentions_logits():
    """Prompts, a ragged catch-up (rows out of order, logits at every token), a dense step: the
    variable-length call through its stand-in against per-row attention."""
    torch.manual_seed(0)
    engine = NativeEngine(tiny_llama(2, seed=5), 98)
    caches = [RowKVCache(4, 32, "cpu"), RowKVCache(4, 32, "cpu", varlen_fn=varlen.reference)]
    n = [len(p) for p in PROMPTS]
    calls = [
        ([0, 1, 2, 3], [0, 0, 0, 0], PROMPTS, False),
        ([3, 1, 2], [n[3], n[1], n[2]], [[44, 45, 46], [23], [35, 36]], True),
        ([0, 1, 2, 3], [n[0], n[1] + 1, n[2] + 2, n[3] + 3], [[1]] * 4, False),
    ]
    for rows, held, tokens, all_logits in calls:
        want, got = (engine.forward(c, rows, held, tokens, all_logits=all_logits) for c in caches)
        assert torch.allclose(got.logits, want.logits, atol=1e-5, rtol=1e-5)
        dense = all(len(t) == 1 for t in tokens)
        assert (caches[1].plan.varlen is None) == dense  # a dense step keeps its batched call
        assert caches[1].plan.gathered is None and not caches[1].plan.masks
