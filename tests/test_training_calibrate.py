"""Entropy threshold calibration and the latency model fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from lm_eval_routed.config_args import load_config
from lm_eval_routed.loading import latency_model
from lm_eval_routed.training import calibrate
from lm_eval_routed.training.calibrate import fit_latency, thresholds_for, token_entropies


def test_thresholds_hit_the_target_shares():
    ent = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    taus = thresholds_for(ent, [0.1, 0.25, 0.5])
    for share, tau in taus.items():
        assert abs(float((ent > tau).float().mean()) - share) <= 0.002
    assert taus[0.1] > taus[0.25] > taus[0.5]
    with pytest.raises(ValueError, match="out of range"):
        thresholds_for(ent, [1.5])


def test_token_entropies_are_normalized_and_positionwise(pair, tokenizer):
    slm = pair[0]
    prompt = tokenizer("Q: hi", add_special_tokens=False)["input_ids"]
    text = tokenizer(" there", add_special_tokens=False)["input_ids"]
    ent = token_entropies(slm, tokenizer, [prompt, prompt], [text, []])
    assert ent.shape == (len(text),)  # the empty text adds nothing
    # each position predicting a token of the text, by hand: entropy over log(V)
    with torch.no_grad():
        logits = slm(torch.tensor([prompt + text])).logits[0, len(prompt) - 1 : -1].double()
    p = logits.softmax(-1)
    expected = -(p * p.log()).sum(-1) / math.log(98)
    assert ent.double().tolist() == pytest.approx(expected.tolist(), rel=1e-4)


def prefill_s(n: int, kv: int) -> float:
    """A clock's prefill: 2e-8 n kv + 3e-7 n^2 + 5e-4 n + 2e-3 seconds."""
    return 2e-8 * n * kv + 3e-7 * n * n + 5e-4 * n + 2e-3


def test_fit_latency_recovers_the_timers_constants(pair, monkeypatch):
    # decode steps (n = 1) on this clock cost 1e-6 kv + 4e-3
    clock = lambda engine, n, kv, repeats: prefill_s(n, kv) if n > 1 else 1e-6 * kv + 4e-3  # noqa: E731
    monkeypatch.setattr(latency_model, "time_forward", clock)
    fit = fit_latency(pair[1], n_inf=(1, 8, 32, 64), n_kv=(0, 16, 64), repeats=1)
    want = {"a": 2e-8, "b": 3e-7, "c": 5e-4, "d": 2e-3, "c_decode": 1e-6, "d_decode": 4e-3}
    assert {k: fit[k] for k in want} == pytest.approx(want, rel=1e-6)
    assert [(m["n_inf"], m["n_kv"]) for m in fit["measured"]] == [
        (n, kv) for n in (1, 8, 32, 64) for kv in (0, 16, 64)
    ]
    assert calibrate.cost_pair(fit) == "0.002:0.0005"


def test_cost_pair_clamps_a_negative_fit_to_zero():
    zero = {"a": 0.0, "b": 0.0, "c_decode": 0.0, "d_decode": 0.0}
    assert calibrate.cost_pair({**zero, "d": -0.001, "c": 0.00025}) == "0:0.00025"
    assert calibrate.cost_pair({**zero, "d": 0.004, "c": -1e-9}) == "0.004:0"


def test_fit_latency_times_a_real_model(pair):
    fit = fit_latency(pair[1], n_inf=(1, 2, 4, 8), n_kv=(0, 16), repeats=1)
    assert [(m["n_inf"], m["n_kv"]) for m in fit["measured"]] == [
        (n, kv) for n in (1, 2, 4, 8) for kv in (0, 16)
    ]
    assert all(m["seconds"] > 0 for m in fit["measured"])


def hand_entropies(slm, tokenizer, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Normalized entropy of the SLM's prediction of each text token after its prompt."""
    out = []
    for prompt, text in pairs:
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = slm(torch.tensor([p_ids + t_ids])).logits[0, len(p_ids) - 1 : -1]
        p = logits.double().softmax(-1)
        out += (-(p * p.log()).sum(-1) / math.log(p.shape[-1])).tolist()
    return np.array(out)


def test_cli_writes_a_config_the_plugin_accepts(tmp_path, pair, tokenizer, capsys, monkeypatch):
    # a timer with known constants: the latency fit, and so cost_slm, is exact
    monkeypatch.setattr(
        latency_model,
        "time_forward",
        lambda engine, n, kv, repeats: 0.003 + 0.0002 * n + 1e-7 * n * kv,
    )
    pair[0].save_pretrained(tmp_path / "slm")
    tokenizer.save_pretrained(tmp_path / "slm")
    data = tmp_path / "cal.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Q{i}:", "text": f" answer {i}."}) + "\n" for i in range(4))
    )
    out = tmp_path / "cal.yaml"
    argv = [
        "entropy",
        "--slm",
        str(tmp_path / "slm"),
        "--data",
        str(data),
        "--text-field",
        "text",
        "--no-chat",
        "--shares",
        "0.25,0.5",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert calibrate.main(argv) == 0
    cfg = load_config(config=str(out))
    details = json.loads(out.with_suffix(".json").read_text())["entropy"]
    ent = hand_entropies(pair[0], tokenizer, [(f"Q{i}:", f" answer {i}.") for i in range(4)])
    # the threshold for share s is the (1 - s) quantile of the entropies (linear interpolation)
    q25, q50 = np.quantile(ent, 0.75), np.quantile(ent, 0.5)
    assert cfg.router == "entropy" and cfg.cost_slm == pytest.approx((0.003, 0.0002))
    assert cfg.threshold == pytest.approx(q25, abs=1e-6)  # the first share's, written to 6 places
    assert details["tokens"] == len(ent) == 4 * len(" answer 0.")
    assert details["thresholds"]["0.5"] == pytest.approx(q50, abs=1e-6)
    assert details["share_above"]["0.5"] == float((ent > q50).mean())
    assert details["thresholds_nats"]["0.5"] == pytest.approx(q50 * math.log(98), abs=1e-5)
    assert yaml.safe_load(out.read_text())["slm"] == str(tmp_path / "slm")
    assert calibrate.main(["entropy", *argv[1:4], str(tmp_path / "missing.jsonl"), *argv[5:]]) == 2
    assert "does not exist" in capsys.readouterr().err
