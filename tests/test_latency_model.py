"""R-Stitch+'s latency model: the least-squares fit on clocks whose constants are known, timing an
engine over a grid, a stitched trajectory's L-hat against sums worked out by hand, and its JSON file."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from lm_eval_routed.core.accounting import Model
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import costs, latency_model
from lm_eval_routed.loading.latency_model import (
    Forward,
    LatencyModel,
    ModelLatency,
    Span,
    Timing,
    Trajectory,
    fit_model,
    forwards_of,
    latency_of,
)
from lm_eval_routed.training import calibrate

# a model's constants, each term of its own size so that swapped columns cannot fit
A, B, C, D, C_DEC, D_DEC = 3e-8, 7e-7, 4e-4, 2.5e-3, 1.5e-6, 3.5e-3
GRID_N, GRID_KV = (1, 8, 32, 128), (0, 64, 256, 512)


def prefill_s(n: int, kv: int) -> float:
    return A * n * kv + B * n * n + C * n + D


def decode_s(kv: int) -> float:
    return C_DEC * kv + D_DEC


def clock_s(n: int, kv: int) -> float:
    return decode_s(kv) if n == 1 else prefill_s(n, kv)


def test_the_fit_recovers_the_constants_of_noise_free_timings():
    fit = fit_model(Timing(n, kv, clock_s(n, kv)) for n in GRID_N for kv in GRID_KV)
    got = (fit.a, fit.b, fit.c, fit.d, fit.c_decode, fit.d_decode)
    assert got == pytest.approx((A, B, C, D, C_DEC, D_DEC), rel=1e-6)
    assert fit.r2_prefill == pytest.approx(1.0) and fit.r2_decode == pytest.approx(1.0)


def test_the_fit_lands_near_the_constants_under_seeded_noise():
    rng = random.Random(0)
    ns, kvs = (1, 4, 8, 16, 32, 64, 96, 128), (0, 32, 64, 128, 256, 384, 512)
    timings = [Timing(n, kv, clock_s(n, kv) * (1 + rng.gauss(0, 0.002))) for n in ns for kv in kvs]
    fit = fit_model(timings)
    # 0.2% noise on each timing: the large terms within 2%; a (at most 3% of a timing) within 15%
    assert fit.a == pytest.approx(A, rel=0.15)
    assert fit.b == pytest.approx(B, rel=0.05)
    assert fit.c == pytest.approx(C, rel=0.02)
    assert fit.d == pytest.approx(D, rel=0.02)
    assert (fit.c_decode, fit.d_decode) == pytest.approx((C_DEC, D_DEC), rel=0.05)
    assert 0.99 < fit.r2_prefill <= 1.0


@pytest.mark.parametrize(
    ("ns", "kvs", "says"),
    [((1, 8, 32), (0, 64), "3 or more new-token counts"), ((1, 8, 16, 32), (0,), "2 or more cache"),
     ((8, 16, 32), (0, 64), "one-token timings")],
)  # fmt: skip
def test_a_grid_that_cannot_fit_is_refused(ns, kvs, says):
    with pytest.raises(ConfigError, match=says):
        fit_model(Timing(n, kv, 1.0) for n in ns for kv in kvs)


class ClockedEngine:
    """An engine whose forward over n tokens after kv cached ones takes ``clock_s(n, kv)`` on a fake
    clock; it checks that the cache holds what the forward says it holds."""

    device = torch.device("cpu")
    pad_id = 0

    def __init__(self) -> None:
        self.now = 100.0

    def new_cache(self, rows: int, capacity: int) -> SimpleNamespace:
        return SimpleNamespace(capacity=capacity, filled=0)

    def forward(self, cache, slots, held, tokens) -> None:
        (kv,), (new,) = held, tokens
        assert slots == [0] and kv <= cache.filled and kv + len(new) <= cache.capacity
        cache.filled = max(cache.filled, kv + len(new))
        self.now += clock_s(len(new), kv)


def test_timing_an_engine_over_the_grid_recovers_its_clock(monkeypatch):
    engine = ClockedEngine()
    monkeypatch.setattr(costs, "time", SimpleNamespace(perf_counter=lambda: engine.now))
    ticks = []
    timings = latency_model.time_grid(
        engine, GRID_N, GRID_KV, repeats=2, progress=lambda: ticks.append(1)
    )
    assert [(t.n_inf, t.n_kv) for t in timings] == [(n, kv) for n in GRID_N for kv in GRID_KV]
    assert [t.seconds for t in timings] == pytest.approx(
        [clock_s(n, kv) for n in GRID_N for kv in GRID_KV]
    )
    assert len(ticks) == len(GRID_N) * len(GRID_KV)
    fit = fit_model(timings)
    assert (fit.a, fit.b, fit.c, fit.d) == pytest.approx((A, B, C, D), rel=1e-6)


# -- L-hat of a stitched trajectory, worked out by hand ---------------------------------------------

# unit-free constants that keep the hand sums exact: prefill n kv + 2 n^2 + 3 n + 4, decode 5 kv + 6
# for the SLM; ten times each for the LLM
SLM_FIT = ModelLatency(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
LLM_FIT = ModelLatency(10.0, 20.0, 30.0, 40.0, 50.0, 60.0)
# a 5-token prompt; the SLM writes 3 tokens, a switch: the LLM writes 2, hands back; the SLM writes 2;
# a switch: the LLM writes 1 and hands back; the SLM's next token switches again, the LLM writes 1
TRAJ = Trajectory(
    5,
    (Span(Model.SLM, 3), Span(Model.LLM, 2), Span(Model.SLM, 2), Span(Model.LLM, 1),
     Span(Model.LLM, 1)),
)  # fmt: skip
S, L = Model.SLM, Model.LLM
HAND_FORWARDS = [
    Forward(S, 5, 0),  # the prompt's prefill; token at context 5
    Forward(S, 1, 5),
    Forward(S, 1, 6),  # SLM tokens at context 6 and 7
    Forward(S, 1, 7),  # the SLM's token at context 8, dropped by the switch
    Forward(L, 8, 0),  # the LLM's first catch-up: prompt and 3 tokens, regenerates context 8
    Forward(L, 1, 8),  # its token at context 9; it hands back
    Forward(S, 2, 8),  # the SLM's catch-up over the LLM's two tokens: context 10
    Forward(S, 1, 10),  # context 11
    Forward(S, 1, 11),  # context 12: dropped by the second switch
    Forward(L, 3, 9),  # the LLM catches up on context 9..11: regenerates context 12; hands back
    Forward(S, 1, 12),  # context 13 (the LLM's token fed): dropped by the third switch
    Forward(L, 1, 12),  # the LLM regenerates context 13
]
# SLM: prefill(5, 0) = 50 + 15 + 4 = 69; decodes at 5, 6, 7 = 31 + 36 + 41; prefill(2, 8) = 16 + 8 +
# 6 + 4 = 34; decodes at 10, 11, 12 = 56 + 61 + 66; total 394.
# LLM: prefill(8, 0) = 1280 + 240 + 40 = 1560; decode(8) = 460; prefill(3, 9) = 270 + 180 + 90 + 40
# = 580; decode(12) = 660; total 3260.
HAND_LATENCY = 394 + 3260


def test_a_trajectorys_forwards_are_its_prefills_catch_ups_and_decode_steps():
    assert forwards_of(TRAJ) == HAND_FORWARDS


def test_l_hat_sums_both_models_forwards():
    assert latency_of(TRAJ, LatencyModel(SLM_FIT, LLM_FIT)) == pytest.approx(HAND_LATENCY)
    # the SLM alone: the prompt's prefill then a decode step per token after it
    alone = Trajectory(5, (Span(Model.SLM, 3),))
    assert latency_of(alone, LatencyModel(SLM_FIT, LLM_FIT)) == pytest.approx(69 + 31 + 36)


# -- the JSON file ---------------------------------------------------------------------------------


def test_saved_constants_read_back(tmp_path):
    path = tmp_path / "latency.json"
    latency_model.save(path, LatencyModel(SLM_FIT, LLM_FIT, {"device": "cpu"}))
    back = latency_model.load(path)
    assert (back.slm.a, back.slm.b, back.slm.c, back.slm.d) == (1.0, 2.0, 3.0, 4.0)
    assert (back.slm.c_decode, back.slm.d_decode) == (5.0, 6.0)
    assert (back.llm.a, back.llm.d, back.llm.d_decode) == (10.0, 40.0, 60.0)
    assert back.measured == {"device": "cpu"}
    assert latency_of(TRAJ, back) == pytest.approx(HAND_LATENCY)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", r"is not valid JSON \(line 1"),
        ('{"format": "something else"}', "is not a latency model"),
        (None, "latency model version 7"),
        ("BAD_NUMBER", r"slm\.b='fast' must be a finite number"),
        ("NO_LLM", "llm must be an object"),
    ],
)
def test_a_bad_file_is_one_line(tmp_path, text, says):
    path = tmp_path / "latency.json"
    good = latency_model.to_json(LatencyModel(SLM_FIT, LLM_FIT))
    if text is None:
        text = json.dumps({**good, "version": 7})
    elif text == "BAD_NUMBER":
        text = json.dumps({**good, "slm": {**good["slm"], "b": "fast"}})
    elif text == "NO_LLM":
        text = json.dumps({k: v for k, v in good.items() if k != "llm"})
    path.write_text(text)
    with pytest.raises(ConfigError, match=says) as err:
        latency_model.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no such file"):
        latency_model.load(tmp_path / "missing.json")


# -- the command -----------------------------------------------------------------------------------


def test_the_command_fits_a_configs_pair(tmp_path, pair, tokenizer, monkeypatch, capsys):
    for name, model in zip(("slm", "llm"), pair):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)

    # each model on its own clock: the LLM (3 layers) three times the SLM's (1 layer)
    def clock(engine, n, kv, repeats):
        return engine.model.config.num_hidden_layers * clock_s(n, kv)

    monkeypatch.setattr(latency_model, "time_forward", clock)
    out = tmp_path / "latency.json"
    args = f"slm={tmp_path / 'slm'},llm={tmp_path / 'llm'},device=cpu"
    assert calibrate.main(["latency", "--model-args", args, "--out", str(out)]) == 0
    fit = latency_model.load(out)
    assert (fit.slm.a, fit.slm.b, fit.slm.c, fit.slm.d) == pytest.approx((A, B, C, D), rel=1e-6)
    assert (fit.llm.c_decode, fit.llm.d_decode) == pytest.approx((3 * C_DEC, 3 * D_DEC), rel=1e-6)
    assert fit.measured["slm"] == str(tmp_path / "slm")
    assert len(fit.measured["timings"]["llm"]) == len(GRID_N) * len(GRID_KV)
    assert "wrote" in capsys.readouterr().out


def test_the_command_refuses_a_grid_before_loading(tmp_path, monkeypatch, capsys):
    from lm_eval_routed.loading import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["latency", "--n-inf", "1,8", "--out", str(tmp_path / "x.json")]
    assert calibrate.main(argv) == 2
    err = capsys.readouterr().err
    assert "3 or more new-token counts" in err and len(err.strip().splitlines()) == 1
    assert calibrate.main(["latency", "--n-kv", "0,x", "--out", "x.json"]) == 2
    assert "--n-kv='0,x' must be whole numbers" in capsys.readouterr().err
