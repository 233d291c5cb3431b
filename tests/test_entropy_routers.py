"""Entropy routers at a tie: R2R's per-token baseline sends H >= threshold to the LLM, R-Stitch opens
an LLM span only when H exceeds tau and hands control back at H <= tau."""

from __future__ import annotations

import math

import torch

from lm_eval_routed.config_args import load_config
from lm_eval_routed.routers.base import StepView, make_router
from lm_eval_routed.routers.entropy import entropy_nats


def view(logits: torch.Tensor) -> StepView:
    return StepView(logits, torch.zeros(len(logits), 4), logits.argmax(-1))


def f32_neighbours(value: float) -> tuple[float, float]:
    """The float32 numbers just below and just above ``value`` (routers compare in float32)."""
    x = torch.tensor(value, dtype=torch.float32)
    down = torch.nextafter(x, torch.tensor(-math.inf)).item()
    up = torch.nextafter(x, torch.tensor(math.inf)).item()
    return down, up


def router(name: str, threshold: float):
    return make_router(name, load_config(router=name, threshold=threshold))


def logits_rows() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 50) * torch.tensor([[0.5], [2.0], [6.0]])


def test_entropy_token_sends_a_tie_to_the_llm():
    logits = logits_rows()
    for i, h in enumerate(entropy_nats(logits).tolist()):
        below, above = f32_neighbours(h)
        assert router("entropy-token", h).route(view(logits))[i]  # H == threshold: LLM
        assert router("entropy-token", below).route(view(logits))[i]
        assert not router("entropy-token", above).route(view(logits))[i]


def test_entropy_stitch_keeps_a_tie_on_the_slm_and_hands_it_back():
    logits = logits_rows()
    normalized = (entropy_nats(logits) / math.log(logits.shape[-1])).tolist()
    for i, h in enumerate(normalized):
        below, above = f32_neighbours(h)
        at = router("entropy", h)
        assert not at.route(view(logits))[i]  # H == tau does not exceed tau: the SLM keeps it
        assert not at.keep_llm(view(logits))[i]  # and an LLM token at H == tau returns control
        assert router("entropy", below).route(view(logits))[i]
        assert router("entropy", below).keep_llm(view(logits))[i]
        assert not router("entropy", above).route(view(logits))[i]


def test_threshold_zero_on_a_certain_token():
    # a certain token has entropy exactly 0: R2R's rule still sends it at threshold 0 (0 >= 0),
    # R-Stitch at tau 0 keeps it on the SLM (0 does not exceed 0)
    logits = torch.full((1, 64), -1000.0)
    logits[0, 3] = 0.0
    assert entropy_nats(logits).item() == 0.0
    assert router("entropy-token", 0.0).route(view(logits)).item()
    assert not router("entropy", 0.0).route(view(logits)).item()
    assert not router("entropy", 0.0).keep_llm(view(logits)).item()
