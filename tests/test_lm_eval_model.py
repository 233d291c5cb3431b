"""The lm-eval adapter's own methods on the tiny pair: chat template, log-likelihoods, accounting."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_eval.api.instance import Instance

from lm_eval_routed.adapters.joins import bare
from lm_eval_routed.adapters.lm_eval_model import RoutedLM
from lm_eval_routed.config_args import load_config
from lm_eval_routed.loading.runtime import build_runtime


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


def test_batched_loglikelihood_keeps_request_order(lm):
    # mixed lengths: the batch is scored longest first, answers come back in request order
    pairs = [("a", "bc"), ("abcdefghij", "k"), ("ab", "cdefg"), ("abcde", "f"), ("x", "y")]
    reqs = [inst("loglikelihood", p, doc_id=i) for i, p in enumerate(pairs)]
    batched = lm.loglikelihood(reqs, disable_tqdm=True)
    alone = [lm.loglikelihood([r], disable_tqdm=True)[0] for r in reqs]
    assert [b[1] for b in batched] == [a[1] for a in alone]
    assert [b[0] for b in batched] == pytest.approx([a[0] for a in alone], abs=1e-4)
    assert len({round(b[0], 3) for b in batched}) == len(pairs)  # distinct, so order is checked


def test_empty_continuation_has_log_likelihood_zero(lm):
    out = lm.loglikelihood(
        [inst("loglikelihood", ("abc", "")), inst("loglikelihood", ("abc", "d"), doc_id=1)],
        disable_tqdm=True,
    )
    assert out[0] == (0.0, True) and out[1][0] < 0


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


def test_each_evaluation_attaches_its_own_records(lm):
    req = inst("generate_until", ("Q: 2+2\nA:", {"until": ["\n"], "max_gen_toks": 4}), doc_id=3)
    sample = {"doc_id": 3, "prompt_hash": None}
    lm.begin_routed_evaluation()
    lm.generate_until([req, req], disable_tqdm=True)
    first = {"samples": {"t": [dict(sample)]}}
    lm.finish_routed_evaluation(first)
    lm.begin_routed_evaluation()
    lm.generate_until([req], disable_tqdm=True)  # a second run in the same process
    second = {"samples": {"t": [dict(sample)]}}
    lm.finish_routed_evaluation(second)
    assert len(first["samples"]["t"][0]["routed"]) == 2
    (only,) = second["samples"]["t"][0]["routed"]  # this run's record, not three
    assert only == bare(lm.records[-1]) and only["cached"] is False


def test_empty_context_is_scored_after_bos_as_hf_does(pair, tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.bos_token = "<unk>"  # a BOS distinct from EOS, so the two choices score differently
    cfg = load_config({"router": "llm-only", "cost_slm": "0:0", "cost_llm": "0:0"})
    lm = RoutedLM.from_runtime(build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tok))
    assert lm.prefix_token_id == tok.bos_token_id != tok.eos_token_id
    ((logp, _),) = lm.loglikelihood([inst("loglikelihood", ("", "ab"))], disable_tqdm=True)
    ids = [tok.bos_token_id, *tok("ab")["input_ids"]]
    with torch.no_grad():
        out = torch.log_softmax(pair[1](torch.tensor([ids[:-1]])).logits[0], -1)
    assert logp == pytest.approx((out[0, ids[1]] + out[1, ids[2]]).item(), abs=1e-4)
    assert lm.runtime.encode("", 4) == [tok.bos_token_id]  # generation starts from the same token


def test_sample_log_join_follows_lm_evals_doc_ids():
    """Requests carry a doc's position among the evaluated docs; lm-eval logs its dataset index,
    which differs under ``--samples``. Each logged sample must still get its own doc's records."""
    from lm_eval_routed.adapters import lm_eval_records

    records = [
        {"tokens": i, "key": {"task": "t", "doc_id": i, "prompt_hash": p}}
        for i, p in enumerate(["hA", "hB", "hA"])
    ]

    def tokens(logged: list[tuple[int, str]]) -> list[list[int]]:
        samples = [{"doc_id": d, "prompt_hash": p} for d, p in logged]
        lm_eval_records.attach({"t": samples}, records)
        return [[r["tokens"] for r in s["routed"]] for s in samples]

    assert tokens([(0, "hA"), (1, "hB"), (2, "hA")]) == [[0], [1], [2]]  # no remapping
    assert tokens([(4, "hA"), (7, "hB"), (9, "hA")]) == [[0], [1], [2]]  # --samples 4 7 9
    # dataset indices that are also positions of other prompts; a repeated prompt pairs up in order
    assert tokens([(1, "hA"), (2, "hB"), (5, "hA")]) == [[0], [1], [2]]
    assert tokens([(3, "hC")]) == [[]]  # nothing recorded for it


@pytest.mark.parametrize(
    "model_args,flags,want",
    [
        # lm-eval passes its --batch_size / --device defaults beside model_args, which may name both
        ("router=random,device=cpu,batch_size=3", {"batch_size": 1, "device": "cuda"}, (3, "cpu")),
        ("router=random", {"batch_size": 5, "device": "cpu", "max_batch_size": None}, (5, "cpu")),
        ("router=random,max_batch_size=4", {"batch_size": 2}, (2, "auto")),
    ],
)
def test_lm_eval_flags_and_model_args_merge(monkeypatch, model_args, flags, want):
    from lm_eval_routed.adapters import lm_eval_model

    class Stop(Exception):
        pass

    seen = {}

    def capture(cfg):
        seen["cfg"] = cfg
        raise Stop  # before anything loads

    monkeypatch.setattr(lm_eval_model, "build_runtime", capture)
    with pytest.raises(Stop):
        lm_eval_model.RoutedLM.create_from_arg_string(model_args, flags)
    assert (seen["cfg"].batch_size, seen["cfg"].device) == want
    with pytest.raises(Stop):
        lm_eval_model.RoutedLM.create_from_arg_obj(
            dict(p.split("=") for p in model_args.split(",")), flags
        )
    assert (seen["cfg"].batch_size, seen["cfg"].device) == want


def test_scoring_normalizes_over_the_llms_whole_head(pair, tokenizer):
    """Routing cuts logits to the vocabulary both models share; scoring is the LLM's alone and
    normalizes over its whole head (models of one tokenizer may pad their heads differently)."""
    from helpers import tiny_llama

    llm = tiny_llama(2, seed=7, vocab=104)  # six head rows past the SLM's 98
    cfg = load_config({"router": "llm-only", "cost_slm": "0:0", "cost_llm": "0:0"})
    lm = RoutedLM.from_runtime(build_runtime(cfg, slm=pair[0], llm=llm, tokenizer=tokenizer))
    assert lm.runtime.decoder.llm.vocab_size == 98
    ((logp, _),) = lm.loglikelihood([inst("loglikelihood", ("abc", "d"))], disable_tqdm=True)
    ids = tokenizer("abcd")["input_ids"]
    with torch.no_grad():
        logits = llm(torch.tensor([ids[:-1]])).logits[0, -1]
    assert logp == pytest.approx(torch.log_softmax(logits, -1)[ids[-1]].item(), abs=1e-4)
    assert logp != pytest.approx(torch.log_softmax(logits[:98], -1)[ids[-1]].item(), abs=1e-4)
