"""Modeled latency charges exactly the calls a sample made: every forward and every router call."""

from __future__ import annotations

import pytest
from test_decoder_fidelity import requests

SLM, LLM, ROUTER = (0.001, 0.0001), (0.01, 0.001), 0.5


def charged(record) -> float:
    """What the cost model says a sample's calls cost, every forward priced in full."""
    return (
        record.slm_calls * SLM[0]
        + record.slm_forward_tokens * SLM[1]
        + record.llm_calls * LLM[0]
        + record.llm_forward_tokens * LLM[1]
        + record.router_calls * ROUTER
    )


@pytest.mark.parametrize(
    "router,extra",
    [
        ("random", {"p": "0.3"}),  # decides before the SLM step
        ("entropy-token", {"threshold": "3.6"}),  # decides on the SLM's step
        ("entropy", {"threshold": "0.8"}),  # and, after each LLM token, whether the LLM keeps on
    ],
)
def test_every_router_call_is_charged(make_runtime, tokenizer, router, extra):
    # no rows ride along, so every forward is charged in full (riders pay their tokens only)
    rt = make_runtime(
        router=router, batch_size=4, cost_router=str(ROUTER), llm_lookahead="false", **extra
    )
    results = rt.generate(requests(tokenizer))
    assert sum(r.record.tokens_llm for r in results) > 0
    for r in results:
        assert r.record.modeled_latency_s == pytest.approx(charged(r.record), rel=1e-9)
