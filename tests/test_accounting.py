"""Per-sample accounting adds up and follows R2R's activated-parameter definition."""

from __future__ import annotations

from lm_eval_routed.accounting import SampleTally
from lm_eval_routed.core.rows import GenRequest


def test_record_formula():
    tally = SampleTally(
        producers=["slm", "slm", "llm", "slm"], llm_scored_positions=1, router_calls=4
    )
    rec = tally.record((10, 100, 1))
    assert rec.tokens == 4 and rec.tokens_slm == 3 and rec.tokens_llm == 1
    assert rec.activated_params == (3 * 10 + 1 * 100) / 4
    assert rec.activated_params_charged == (4 * 10 + 1 * 100 + 4 * 1) / 4
    assert rec.switches == 2 and rec.llm_positions == [2]


def test_counts_add_up_for_every_router(make_runtime, tokenizer):
    prompts = ["alpha beta", "gamma", "delta epsilon zeta"]
    for router, extra in [
        ("random", {"p": "0.4"}),
        ("entropy", {"threshold": "0.8"}),
        ("speculative", {}),
        ("entropy-token", {"threshold": "3.6"}),
    ]:
        rt = make_runtime(router=router, batch_size=2, **extra)
        reqs = [GenRequest(tokenizer(p)["input_ids"], 16, seed=i) for i, p in enumerate(prompts)]
        results = rt.generate(reqs)
        # the routers mix the two models on these prompts (thresholds picked for the tiny pair);
        # speculative keeps none of the SLM's drafts, since the tiny pair never agrees
        llm_tokens, tokens = (
            sum(getattr(r.record, f) for r in results) for f in ("tokens_llm", "tokens")
        )
        assert llm_tokens > 0 and (llm_tokens < tokens or router == "speculative")
        for req, res in zip(reqs, results):
            rec = res.record
            assert rec.tokens == len(res.token_ids)
            assert rec.tokens_slm + rec.tokens_llm == rec.tokens
            assert len(rec.llm_positions) == rec.tokens_llm
            # the LLM has seen the prompt once it was called at all
            if rec.llm_calls:
                assert rec.llm_forward_tokens >= len(req.prompt_ids)
            assert rec.slm_forward_tokens >= len(req.prompt_ids)
            assert rec.latency_s > 0 and rec.modeled_latency_s > 0


def test_lazy_catch_up_feeds_each_token_once(make_runtime, tokenizer):
    # without guessing ahead: dropped guesses are fed again, by design
    rt = make_runtime(router="random", p="0.3", batch_size=1, guess_ahead="0")
    req = GenRequest(tokenizer("catch up")["input_ids"], 30, seed=7)
    rec = rt.generate([req])[0].record
    total = len(req.prompt_ids) + rec.tokens
    # every token reaches each model at most once (the last one is never fed back)
    assert rec.slm_forward_tokens <= total
    assert rec.llm_forward_tokens <= total
