"""The mixed decoder reproduces each plain model where the policy says it should, at any batch size."""

from __future__ import annotations

import pytest
import torch

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core import guesses
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.loading.runtime import build_runtime

PROMPTS = [
    "The cat sat",
    "2+2=",
    "Once upon a time, in a land far",
    "x",
    "Hello world\n",
    "abc" * 5,
    "Routing tokens",
    "zz top",
]
N_NEW = 24


def requests(tokenizer, n_new=N_NEW, **kw):
    return [
        GenRequest(prompt_ids=tokenizer(p)["input_ids"], max_new_tokens=n_new, seed=i, **kw)
        for i, p in enumerate(PROMPTS)
    ]


def hf_greedy(model, tokenizer, prompt, n_new=N_NEW):
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=n_new, do_sample=False, eos_token_id=1, pad_token_id=1)
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("router,which", [("llm-only", 1), ("slm-only", 0), ("speculative", 1)])
def test_matches_plain_greedy(make_runtime, pair, tokenizer, router, which):
    rt = make_runtime(router=router, batch_size=4)
    results = rt.generate(requests(tokenizer))
    for prompt, res in zip(PROMPTS, results):
        assert res.token_ids == hf_greedy(pair[which], tokenizer, prompt)


@pytest.mark.parametrize(
    "router,extra",
    [
        ("slm-only", {}),
        ("llm-only", {}),
        ("random", {"p": "0.3"}),
        ("entropy", {"threshold": "0.8"}),  # LLM share ~0.35 on the tiny pair
        ("entropy-token", {"threshold": "3.6"}),  # ~0.38
        ("speculative", {"gamma": "3"}),
    ],
)
@pytest.mark.parametrize("min_batch", ["3", "0"])  # 0: the cost rule (schedule.py)
def test_batch_one_equals_batch_eight(make_runtime, tokenizer, router, extra, min_batch):
    one = make_runtime(router=router, batch_size=1, **extra).generate(requests(tokenizer))
    eight = make_runtime(router=router, batch_size=8, llm_min_batch=min_batch, **extra).generate(
        requests(tokenizer)
    )
    assert [r.token_ids for r in one] == [r.token_ids for r in eight]
    assert [r.record.llm_positions for r in one] == [r.record.llm_positions for r in eight]
    llm_tokens = sum(r.record.tokens_llm for r in eight)
    assert (llm_tokens > 0) == (router != "slm-only")  # each routing policy here uses the LLM


def test_schedule_does_not_change_outputs(make_runtime, tokenizer):
    runs = [
        make_runtime(router="random", p="0.25", batch_size=8, llm_min_batch=str(k)).generate(
            requests(tokenizer)
        )
        for k in (1, 4, 8, 0)  # 0: the cost rule
    ]
    runs.append(
        make_runtime(router="random", p="0.25", batch_size=8, schedule="lockstep").generate(
            requests(tokenizer)
        )
    )
    assert all([r.token_ids for r in run] == [r.token_ids for r in runs[0]] for run in runs)


@pytest.mark.parametrize(
    "router,extra",
    [("random", {"p": "0.3"}), ("entropy", {"threshold": "0.8"}), ("speculative", {"gamma": "3"})],
)
def test_gathered_attention_decodes_the_same(make_runtime, tokenizer, router, extra):
    """The GPU's attention path (gathered, cache.py) writes what the CPU's per-row path writes."""

    def run(gather: bool, batch: int) -> list[list[int]]:
        rt = make_runtime(router=router, batch_size=batch, llm_min_batch="3", **extra)
        rt.decoder.slm.gather = rt.decoder.llm.gather = gather
        return [r.token_ids for r in rt.generate(requests(tokenizer))]

    per_row = run(False, 8)
    assert run(True, 8) == per_row
    assert run(True, 1) == per_row


def test_random_extremes_equal_single_models(make_runtime, tokenizer):
    reqs = requests(tokenizer)
    p0 = make_runtime(router="random", p="0", batch_size=4).generate(reqs)
    p1 = make_runtime(router="random", p="1", batch_size=4).generate(reqs)
    slm = make_runtime(router="slm-only", batch_size=4).generate(reqs)
    llm = make_runtime(router="llm-only", batch_size=4).generate(reqs)
    assert [r.token_ids for r in p0] == [r.token_ids for r in slm]
    assert [r.token_ids for r in p1] == [r.token_ids for r in llm]
    assert all(r.record.tokens_llm == 0 for r in p0)
    assert all(r.record.tokens_slm == 0 for r in p1)


def test_entropy_threshold_extremes(make_runtime, tokenizer):
    reqs = requests(tokenizer)
    everything = make_runtime(router="entropy", threshold="0").generate(reqs)
    nothing = make_runtime(router="entropy", threshold="1").generate(reqs)
    assert all(r.record.llm_share == 1.0 for r in everything)
    assert all(r.record.llm_share == 0.0 for r in nothing)
    llm = make_runtime(router="llm-only").generate(reqs)
    assert [r.token_ids for r in everything] == [r.token_ids for r in llm]


def test_sampling_is_batch_invariant_and_seeded(make_runtime, tokenizer):
    kw = {"do_sample": True, "temperature": 0.8, "top_p": 0.9}
    one = make_runtime(router="random", p="0.3", batch_size=1).generate(requests(tokenizer, **kw))
    eight = make_runtime(router="random", p="0.3", batch_size=8).generate(requests(tokenizer, **kw))
    assert [r.token_ids for r in one] == [r.token_ids for r in eight]
    greedy = make_runtime(router="random", p="0.3").generate(requests(tokenizer))
    assert [r.token_ids for r in one] != [r.token_ids for r in greedy]


def test_speculative_sampling_runs_and_counts(make_runtime, tokenizer):
    kw = {"do_sample": True, "temperature": 1.0}
    res = make_runtime(router="speculative", gamma="4", batch_size=4).generate(
        requests(tokenizer, **kw)
    )
    for r in res:
        assert r.record.tokens == len(r.token_ids) <= N_NEW
        assert r.record.tokens_slm + r.record.tokens_llm == r.record.tokens


@pytest.mark.parametrize(
    "router,extra", [("random", {"p": "0.25"}), ("entropy-token", {"threshold": "3.6"})]
)
def test_guessing_ahead_does_not_change_outputs(
    make_runtime, tokenizer, router, extra, monkeypatch
):
    # the tiny pair disagrees on most tokens, so most guesses are dropped and decoded again; guess
    # on regardless of how often that happens, to roll back as often as possible
    monkeypatch.setattr(guesses, "GUESS_BREAK_EVEN", 0.0)
    base = make_runtime(router=router, batch_size=1, guess_ahead="0", **extra)
    want = base.generate(requests(tokenizer))
    for ahead, batch in ((1, 8), (3, 8), (8, 8), (4, 1)):
        rt = make_runtime(router=router, batch_size=batch, guess_ahead=str(ahead), **extra)
        got = rt.generate(requests(tokenizer))
        assert [r.token_ids for r in got] == [r.token_ids for r in want]
        assert [r.record.llm_positions for r in got] == [r.record.llm_positions for r in want]


def test_right_guesses_save_llm_calls(pair, tokenizer):
    # with the LLM as its own SLM every guess is right: rows never roll back
    cfg = {"router": "random", "p": "0.3", "cost_slm": "0:0", "cost_llm": "0:0"}
    llm = pair[1]

    def run(ahead: str):
        rt = build_runtime(load_config({**cfg, "guess_ahead": ahead}), llm, llm, tokenizer)
        return rt.generate(requests(tokenizer))

    waited, guessed = run("0"), run("6")
    assert [r.token_ids for r in guessed] == [r.token_ids for r in waited]
    assert sum(r.record.llm_calls for r in guessed) < sum(r.record.llm_calls for r in waited)
    # nothing is fed twice when no guess is dropped
    for r, req in zip(guessed, requests(tokenizer)):
        assert r.record.slm_forward_tokens <= len(req.prompt_ids) + r.record.tokens


def test_sampled_rows_wait_instead_of_guessing(make_runtime, tokenizer):
    kw = {"do_sample": True, "temperature": 0.8}
    runs = [
        make_runtime(router="random", p="0.3", batch_size=8, guess_ahead=a).generate(
            requests(tokenizer, **kw)
        )
        for a in ("0", "4")
    ]
    assert [r.token_ids for r in runs[0]] == [r.token_ids for r in runs[1]]
    assert [r.record.slm_calls for r in runs[0]] == [r.record.slm_calls for r in runs[1]]


def test_wrong_guesses_turn_guessing_off(make_runtime, tokenizer, monkeypatch):
    def slm_tokens():
        rt = make_runtime(router="random", p="0.3", batch_size=8, guess_ahead="4")
        return sum(r.record.slm_forward_tokens for r in rt.generate(requests(tokenizer)))

    always = None
    with monkeypatch.context() as m:
        m.setattr(guesses, "GUESS_BREAK_EVEN", 0.0)
        always = slm_tokens()
    # the tiny pair's guesses are nearly all wrong: the run soon stops making them
    assert slm_tokens() < 0.8 * always
