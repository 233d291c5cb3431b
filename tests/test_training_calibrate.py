"""Entropy threshold calibration and the latency model fit."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from lm_eval_routed.config import load_config
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
    logits = slm(torch.tensor([prompt + text])).logits[0, len(prompt) - 1]
    p = logits.detach().softmax(-1)
    expected = float(-(p * p.log()).sum() / math.log(98))
    assert float(ent[0]) == pytest.approx(expected, rel=1e-4)
    assert bool(((ent >= 0) & (ent <= 1)).all())


def test_least_squares_recovers_known_constants():
    grid = [(n, kv) for n in (1, 4, 16) for kv in (0, 32, 128)]
    times = [0.002 + 0.0005 * n + 1e-6 * n * kv for n, kv in grid]
    (a, b, c), r2 = calibrate._lstsq([[1.0, n, n * kv] for n, kv in grid], times)
    assert (a, b, c) == pytest.approx((0.002, 0.0005, 1e-6), rel=1e-6)
    assert r2 == pytest.approx(1.0)


def test_fit_latency_on_a_tiny_model(pair):
    fit = fit_latency(pair[1], ns=(1, 8), kvs=(0, 16), repeats=1)
    assert set(fit) == {"prefill", "decode", "measured"} and len(fit["measured"]) == 4
    assert all(m["s"] > 0 for m in fit["measured"])
    assert set(fit["prefill"]) == {"fixed_s", "per_token_s", "per_token_kv_s", "r2"}
    fixed, per_token = (float(x) for x in calibrate.cost_pair(fit).split(":"))
    assert fixed >= 0 and per_token >= 0


def test_cli_writes_a_config_the_plugin_accepts(tmp_path, pair, tokenizer, capsys):
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
    details = json.loads(out.with_suffix(".json").read_text())
    assert cfg.router == "entropy" and cfg.cost_slm is not None
    assert cfg.threshold == pytest.approx(details["entropy"]["thresholds"]["0.25"], abs=1e-6)
    assert details["entropy"]["tokens"] == 4 * len(" answer 0.")
    assert abs(details["entropy"]["share_above"]["0.5"] - 0.5) < 0.05
    nats = details["entropy"]["thresholds_nats"]["0.5"]
    assert nats == pytest.approx(details["entropy"]["thresholds"]["0.5"] * math.log(98))
    assert "slm" in yaml.safe_load(out.read_text())
    assert calibrate.main(["entropy", *argv[1:4], str(tmp_path / "missing.jsonl"), *argv[5:]]) == 2
    assert "does not exist" in capsys.readouterr().err
