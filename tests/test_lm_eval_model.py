"""The lm-eval adapter's own methods on the tiny pair: chat template, log-likelihoods, accounting."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_eval.api.instance import Instance

from lm_eval_routed.config import load_config
from lm_eval_routed.lm_eval_model import RoutedLM
from lm_eval_routed.runtime import build_runtime


@pytest.fixture
def lm(pair, tokenizer):
    tok = copy.deepcopy(tokenizer)  # the session tokenizer stays template-free for other tests
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    cfg = load_config(
        {"router": "random", "p": "0.5", "batch_size": "2", "cost_slm": "0:0", "cost_llm": "0:0"}
    )
    return RoutedLM.from_runtime(build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tok))


def inst(kind, args, doc_id=0, idx=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx, metadata=("t", doc_id, 1))


def test_chat_template_is_the_tokenizers(lm):
    text = lm.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<user>hi\n<assistant>"


def test_loglikelihood_matches_direct_llm_scoring(lm, pair, tokenizer):
    ctx, cont = "abc", "de"
    ((logp, greedy),) = lm.loglikelihood([inst("loglikelihood", (ctx, cont))], disable_tqdm=True)
    ids = tokenizer(ctx + cont)["input_ids"]
    with torch.no_grad():
        out = torch.log_softmax(pair[1](torch.tensor([ids[:-1]])).logits[0], -1)
    want = out[len(ids) - 3].gather(-1, torch.tensor([ids[-2]])) + out[len(ids) - 2, ids[-1]]
    assert logp == pytest.approx(want.item(), abs=1e-4)
    rec = lm.records[-1]
    assert (
        rec["scored_by"] == "llm"
        and rec["llm_forward_tokens"] == len(ids) - 1
        and rec["tokens"] == 0
    )


def test_rolling_loglikelihood_is_negative_and_recorded(lm):
    (total,) = lm.loglikelihood_rolling(
        [inst("loglikelihood_rolling", ("hello world",))], disable_tqdm=True
    )
    assert total < 0 and lm.records[-1]["scored_by"] == "llm"


def test_generate_until_respects_until_and_keys_repeats(lm):
    req = inst("generate_until", ("Q: 1+1\nA:", {"until": ["\n"], "max_gen_toks": 10}), doc_id=3)
    out = lm.generate_until([req, req], disable_tqdm=True)  # lm-eval clones a request per repeat
    assert all("\n" not in text for text in out)
    keys = [r["key"] for r in lm.records[-2:]]
    assert [k["repeat"] for k in keys] == [0, 1] and {k["doc_id"] for k in keys} == {3}
