"""The packed engine against the plain model: every layout must give the logits of a full re-forward."""

from __future__ import annotations

import logging

import pytest
import torch

from lm_eval_routed.core import cache as cache_module
from lm_eval_routed.core.cache import round_up
from lm_eval_routed.core.engine import HFEngine

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [30, 31, 32, 33, 34], [40, 41, 42, 43]]


def reference(model, seq: list[int]) -> torch.Tensor:
    """(len(seq), V) logits of one sequence through the plain model, no cache."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0].float()


@pytest.fixture(
    params=[
        (1, False, None),
        (4, False, None),
        (1, True, None),
        (4, True, None),
        (4, False, True),
        (4, True, True),
    ],
    ids=[
        "no-padding",
        "pad-to-4",
        "gathered",
        "gathered-pad-to-4",
        "pad-to-4-repeat-kv",
        "gathered-pad-to-4-repeat-kv",
    ],
)
def engine(pair, request):
    """Both attention paths (per row: the CPU default; gathered: the GPU default), padded or not, and
    with KV heads repeated before masked calls (where CUDA has no fused kernel for grouped heads)."""
    pad, gather, repeat_kv = request.param
    return HFEngine(pair[1], vocab_size=98, pad_multiple=pad, gather=gather, repeat_kv=repeat_kv)


def prefilled(engine: HFEngine):
    cache = engine.new_cache(len(PROMPTS), 64)
    out = engine.forward(cache, [0, 1, 2, 3], [0, 0, 0, 0], PROMPTS)
    return cache, out


def test_prefill_of_unequal_prompts_matches_plain(engine, pair):
    _, out = prefilled(engine)
    for i, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(out.logits[i], reference(pair[1], prompt)[-1], atol=1e-4, rtol=0)


def test_ragged_rows_in_any_order(engine, pair):
    cache, _ = prefilled(engine)
    rows, new = [3, 1, 2], [[44], [23, 24, 25], [35, 36]]  # not in slot order, 1 to 3 tokens each
    lengths = [len(PROMPTS[r]) for r in rows]
    out = engine.forward(cache, rows, lengths, new, all_logits=True)
    assert (cache.plan.gathered is not None) == engine.gather  # the path under test ran
    assert out.logits.shape == (3, 3, 98) and out.hidden.shape == (3, 64)
    for i, (row, tokens) in enumerate(zip(rows, new)):
        ref = reference(pair[1], PROMPTS[row] + tokens)[-len(tokens) :]
        torch.testing.assert_close(out.logits[i, : len(tokens)], ref, atol=1e-4, rtol=0)


def test_gathered_rows_from_scattered_slots(pair):
    """Gathering rows 1 and 3 of 4 (a copy of their slots, not a view) attends over the right ones."""
    engine = HFEngine(pair[1], vocab_size=98, gather=True)
    cache, _ = prefilled(engine)
    new = [[90, 91], [92]]
    out = engine.forward(cache, [3, 1], [len(PROMPTS[3]), len(PROMPTS[1])], new, all_logits=True)
    assert cache.plan.gathered.slots.tolist() == [1, 3]
    for i, row in enumerate([3, 1]):
        ref = reference(pair[1], PROMPTS[row] + new[i])[-len(new[i]) :]
        torch.testing.assert_close(out.logits[i, : len(new[i])], ref, atol=1e-4, rtol=0)


def test_dense_decode_step_with_unequal_lengths(engine, pair):
    cache, _ = prefilled(engine)
    new = [[50], [51], [52], [53]]  # slots 0..3, one token each: the batched attention path
    out = engine.forward(cache, [0, 1, 2, 3], [len(p) for p in PROMPTS], new)
    for i, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(
            out.logits[i], reference(pair[1], prompt + new[i])[-1], atol=1e-4, rtol=0
        )


def test_rows_outside_a_forward_keep_their_cache(engine):
    cache, _ = prefilled(engine)
    before = [k[:4].clone() for k in cache.keys]
    engine.forward(cache, [2], [len(PROMPTS[2])], [[60, 61, 62]])  # 3 tokens: padded when pad-to-4
    for k, old in zip(cache.keys, before):
        assert torch.equal(k[[0, 1, 3]], old[[0, 1, 3]])
        n = len(PROMPTS[2])
        assert torch.equal(k[2, :, :n], old[2, :, :n]) and not torch.equal(
            k[2, :, n : n + 3], old[2, :, n : n + 3]
        )


def test_rolled_back_row_overwrites_stale_slots(engine, pair):
    cache, _ = prefilled(engine)
    n = len(PROMPTS[1])
    # drafts later rejected: the length goes back to n
    engine.forward(cache, [1], [n], [[70, 71, 72]])
    out = engine.forward(cache, [1], [n], [[80]])
    torch.testing.assert_close(
        out.logits[0], reference(pair[1], PROMPTS[1] + [80])[-1], atol=1e-4, rtol=0
    )


def test_model_attention_is_left_as_found(engine, pair):
    before = pair[1].config._attn_implementation
    prefilled(engine)
    assert pair[1].config._attn_implementation == before
    with torch.no_grad():  # the same model still runs its own attention outside the engine
        pair[1](input_ids=torch.tensor([PROMPTS[0]]))


def test_masks_are_additive_in_the_model_dtype(pair):
    """Built once per forward as SDPA adds them (0 / -inf), so no layer converts a boolean mask."""
    engine = HFEngine(pair[1], vocab_size=98, gather=True)
    cache, _ = prefilled(engine)
    engine.forward(cache, [1, 3], [len(PROMPTS[1]), len(PROMPTS[3])], [[90, 91], [92]])
    mask = cache.plan.gathered.mask
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, float("-inf")}
    # row 1 (3 cached + 2 new): its first new token sees slots 0..3, its second 0..4
    assert (mask[0, 0] == 0).tolist() == [[True] * 4 + [False], [True] * 5]


def test_cpu_keeps_grouped_heads_in_one_fused_call():
    """On the CPU, torch's flash kernel takes a masked call with grouped KV heads: nothing repeated."""
    assert cache_module.fused_masked_gqa(torch.device("cpu"), torch.float32, 9, 3, 64)


def test_round_up():
    assert [round_up(n, 4) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 4, 4, 4, 8, 8, 12]
    assert round_up(7, 1) == 7


def test_sliding_window_models_are_flagged(pair, caplog):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=98,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=16,
    )
    with caplog.at_level(logging.WARNING, logger="lm_eval_routed.core.engine"):
        HFEngine(pair[1], vocab_size=98)
        assert "sliding window" not in caplog.text
        HFEngine(MistralForCausalLM(cfg), vocab_size=98)
    assert "16-token sliding window" in caplog.text
