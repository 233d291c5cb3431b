"""Stop strings, EOS, length limits, prompt truncation and vocabulary checks."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import char_tokenizer, tiny_llama

from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.models import check_same_vocab


def test_stop_string_across_token_boundaries(make_runtime, tokenizer):
    rt = make_runtime(router="llm-only")
    prompt = tokenizer("Hello there")["input_ids"]
    free = rt.generate([GenRequest(prompt, 30)])[0]
    text = tokenizer.decode(free.token_ids)
    stop = text[5:8]  # three characters = three tokens of the char tokenizer
    assert len(stop) == 3
    cut = rt.generate([GenRequest(prompt, 30, stop=(stop,))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.index(stop)]
    # decoding stopped right after the stop string
    assert len(cut.token_ids) == text.index(stop) + 3


def test_eos_and_length(make_runtime, tokenizer):
    rt = make_runtime(router="slm-only")
    res = rt.generate([GenRequest(tokenizer("abc")["input_ids"], 5)])[0]
    assert res.finish_reason == "length" and len(res.token_ids) == 5
    rt.decoder.eos_ids = {res.token_ids[2]}
    first_eos = res.token_ids.index(res.token_ids[2])
    res = rt.generate([GenRequest(tokenizer("abc")["input_ids"], 5)])[0]
    assert res.finish_reason == "eos" and len(res.token_ids) == first_eos + 1


def test_long_prompt_truncated_from_left(make_runtime, tokenizer, caplog):
    rt = make_runtime(router="random", p="0.5", max_length="64")
    text = "".join(chr(97 + i % 26) for i in range(200))
    with caplog.at_level(logging.WARNING):
        ids = rt.encode(text, 16)
    assert ids == tokenizer(text)["input_ids"][-48:]
    assert "truncated from the left" in caplog.text
    res = rt.generate([GenRequest(ids, 16)])[0]
    assert len(res.token_ids) == 16


def test_no_room_for_prompt_is_a_config_error(make_runtime):
    rt = make_runtime(max_length="16")
    with pytest.raises(ConfigError, match="max_gen_toks=32 leaves no room"):
        rt.encode("hello", 32)


def test_empty_prompt_starts_from_the_bos_token(make_runtime, tokenizer):
    rt = make_runtime(router="random", p="0.5")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    assert start is not None and rt.encode("", 4) == [start]
    res = rt.generate(
        [GenRequest(rt.encode("", 4), 4), GenRequest(tokenizer("ab")["input_ids"], 4)]
    )
    assert [len(r.token_ids) for r in res] == [4, 4]
    with pytest.raises(ValueError, match="at least one prompt token"):
        GenRequest([], 4)


def test_zero_new_tokens_writes_nothing_and_runs_no_forward(make_runtime, tokenizer):
    rt = make_runtime(router="random", p="0.5", batch_size="2")
    rt.decoder.trace = []
    done = []
    prompt = tokenizer("abc")["input_ids"]
    res = rt.generate(
        [GenRequest(prompt, 0), GenRequest(prompt, 3)], on_done=lambda i, r: done.append(i)
    )
    assert (res[0].text, res[0].token_ids, res[0].record.tokens) == ("", [], 0)
    assert len(res[1].token_ids) == 3 and sorted(done) == [0, 1]
    assert all(len(fed) == 1 for _, fed in rt.decoder.trace)  # only the 3-token request ran


def test_vocabulary_mismatch_is_a_config_error():
    tok = char_tokenizer()
    other = char_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ConfigError, match="different vocabularies"):
        check_same_vocab(tok, other, "small", "big")


def test_continuous_batching_more_requests_than_slots(make_runtime, tokenizer):
    prompts = [f"prompt {i}" * (i % 3 + 1) for i in range(7)]
    reqs = [GenRequest(tokenizer(p)["input_ids"], 8 + i, seed=i) for i, p in enumerate(prompts)]
    rt = make_runtime(router="random", p="0.3", batch_size=3)
    many = rt.generate(reqs)
    alone = [make_runtime(router="random", p="0.3").generate([r])[0] for r in reqs]
    assert [r.token_ids for r in many] == [r.token_ids for r in alone]
    for i, r in enumerate(many):
        assert (
            len(r.token_ids) == 8 + i if r.finish_reason == "length" else len(r.token_ids) <= 8 + i
        )


def test_models_differ_so_fidelity_tests_mean_something(pair, tokenizer):
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    a = pair[0].generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=1)
    b = pair[1].generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=1)
    assert a.tolist() != b.tolist()
    assert tiny_llama(1, seed=1).config.vocab_size == len(tokenizer)
