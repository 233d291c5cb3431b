"""Rows still decoding ride along in LLM forwards and take the LLM's prediction for their next
position when the router sends it there (``llm_lookahead``): fewer waits, the same tokens."""

from __future__ import annotations

import dataclasses

import pytest
from test_decoder_fidelity import requests

from lm_eval_routed.core.rows import GenRequest


def run(make_runtime, tokenizer, lookahead: bool, sample: bool = False, **args):
    """Results, LLM forwards and LLM tokens taken from rides of one batch-8 run of 64 tokens a row
    (the LLM runs once 3 rows wait, so others are still decoding when it does)."""
    args = {"llm_min_batch": "3", **args}
    rt = make_runtime(batch_size=8, llm_lookahead=str(lookahead).lower(), **args)
    rt.decoder.trace = []
    kw = {"do_sample": True, "temperature": 0.8, "top_p": 0.9} if sample else {}
    results = rt.generate(requests(tokenizer, 64, **kw))
    forwards = sum(1 for model, _ in rt.decoder.trace if model == "llm")
    return results, forwards, rt.decoder.counters.taken_at_hand


ROUTERS = [
    ("random", {"p": "0.25"}),  # blind: decides before the SLM step
    ("entropy-token", {"threshold": "3.6"}),  # looks at the SLM's step
    ("entropy", {"threshold": "0.8"}),  # stitch: the LLM may keep control after the taken token
]


@pytest.mark.parametrize("router,extra", ROUTERS)
@pytest.mark.parametrize("sample", [False, True])
def test_lookahead_saves_forwards_not_tokens(make_runtime, tokenizer, router, extra, sample):
    off, forwards_off, taken_off = run(
        make_runtime, tokenizer, False, sample, router=router, **extra
    )
    on, forwards_on, taken_on = run(make_runtime, tokenizer, True, sample, router=router, **extra)
    assert [r.token_ids for r in on] == [r.token_ids for r in off]
    assert [r.record.llm_positions for r in on] == [r.record.llm_positions for r in off]
    assert sum(r.record.tokens_llm for r in on) > 0
    assert taken_off == 0 < taken_on
    assert forwards_on < forwards_off


def rides(record) -> int:
    """LLM forwards a sample rode along in, read back from its modeled latency: conftest's cost model
    (SLM 1 ms + 0.1 ms/token, LLM 10 ms + 1 ms/token, router pinned at 0) with the fixed part left out."""
    tokens_only = (
        record.slm_calls * 0.001
        + record.slm_forward_tokens * 0.0001
        + record.llm_calls * 0.01
        + record.llm_forward_tokens * 0.001
    )
    return round((tokens_only - record.modeled_latency_s) / 0.01)


def test_riders_pay_their_tokens_not_the_forward(make_runtime, tokenizer):
    """Modeled latency prices the forwards run for a row in full (as if alone at batch 1) and the
    ones it rode along in by its tokens alone: the forward would have run without it."""
    kw = {"router": "random", "p": "0.25", "cost_router": "0"}
    off, _, _ = run(make_runtime, tokenizer, False, **kw)
    on, _, _ = run(make_runtime, tokenizer, True, **kw)
    assert all(rides(r.record) == 0 for r in off)
    counts = [rides(r.record) for r in on]
    assert all(0 <= n < r.record.llm_calls for n, r in zip(counts, on))
    assert sum(counts) > 0


def test_lockstep_keeps_rows_out_of_others_forwards(make_runtime):
    info = make_runtime(router="random", p="0.25", schedule="lockstep").info()["routed"]
    assert info["llm_lookahead"] is False
    assert make_runtime(router="random", p="0.25").info()["routed"]["llm_lookahead"] is True
    assert make_runtime(router="speculative").info()["routed"]["llm_lookahead"] is False


def test_a_row_rides_while_the_wait_it_may_save_outweighs_the_tokens_it_may_waste(
    make_runtime, tokenizer
):
    """With chance r a ride saves one row of an LLM forward (fixed cost / rows per forward); the
    tokens it feeds are wasted if no later position of the row is routed, chance (1 - r) ** left."""
    from lm_eval_routed.core.accounting import Model
    from lm_eval_routed.core.rows import Row

    def row_with(left: int, unseen: int) -> Row:
        req = GenRequest(prompt_ids=[1], max_new_tokens=100)
        row = Row(0, req, 0, [1] + [0] * (100 - left), None, None)  # type: ignore[arg-type]
        row.cached[Model.LLM] = len(row.seq) - unseen
        return row

    dec = make_runtime(router="random", p="0.05", batch_size=8).decoder  # LLM 10 ms + 1 ms/token
    dec.counters.routed, dec.counters.decided = 4, 98  # r = (4 + 1) / (98 + 2) = 0.05
    # (5 + 1) / (1 + 1) = 3 rows per forward: a saved wait is worth 0.05 * 10 / 3 ms
    dec.counters.rows_served, dec.counters.llm_forwards = 5, 1
    # 5 unseen tokens waste 5 ms * 0.95 ** left: no more than the wait saved from 67 tokens left on
    assert dec.riding.rides(row_with(left=67, unseen=5), dec.counters)
    assert not dec.riding.rides(row_with(left=66, unseen=5), dec.counters)
    assert not dec.riding.rides(row_with(left=67, unseen=6), dec.counters)
    dec.riding.costs = dataclasses.replace(dec.costs, llm=(0.01, 0.0))  # tokens free, as on a GPU
    assert dec.riding.rides(row_with(left=1, unseen=5), dec.counters)
    unseen_by_the_llm = row_with(left=67, unseen=5)
    # it would feed its prompt: it waits for its first routed one
    unseen_by_the_llm.cached[Model.LLM] = 0
    assert not dec.riding.rides(unseen_by_the_llm, dec.counters)
    dec.riding.enabled = False
    assert not dec.riding.rides(row_with(left=67, unseen=5), dec.counters)
