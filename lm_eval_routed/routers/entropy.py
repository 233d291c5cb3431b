"""Entropy routing: R-Stitch's stitching (normalized entropy) and R2R's per-token baseline (raw nats).

R-Stitch (arXiv 2507.17307): H = -sum p log p / log V over the full vocabulary, in [0, 1]. When an SLM
token's H exceeds tau (H > tau) the LLM regenerates it and keeps control until it emits a token with
H <= tau. R2R's baseline routes single positions whose raw natural-log entropy is at least its threshold
(H >= tau, 0.45 in their code: the SLM keeps a position only when H < tau). Each method keeps its own
rule at a tie. Entropy is taken on the raw logits (temperature 1), whatever the sampling temperature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.routers.base import Router, RouterKind, StepView, register_router


def entropy_nats(logits: Tensor) -> Tensor:
    """(b,) natural-log entropy of softmax(logits) over the last dimension."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class EntropyStitch(Router):
    """R-Stitch: switch to the LLM on an uncertain SLM token, back once the LLM is confident."""

    name = "entropy"
    kind = RouterKind.STITCH

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def _normalized(self, view: StepView) -> Tensor:
        return entropy_nats(view.logits) / math.log(view.logits.shape[-1])

    def route(self, slm: StepView) -> Tensor:
        return self._normalized(slm) > self.threshold  # "exceeds tau"

    def keep_llm(self, llm: StepView) -> Tensor:
        return self._normalized(llm) > self.threshold  # control returns at H <= tau

    def info(self) -> dict:
        return {**super().info(), "entropy_units": "normalized (H / log V)"}


class EntropyToken(Router):
    """Per-token routing on raw entropy in nats (R2R's entropy baseline)."""

    name = "entropy-token"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def route(self, slm: StepView) -> Tensor:
        return entropy_nats(slm.logits) >= self.threshold  # R2R: SLM only below the threshold

    def info(self) -> dict:
        return {**super().info(), "entropy_units": "nats"}


def _stitch_tau(cfg: RoutedConfig) -> float:
    tau = 0.1 if cfg.threshold is None else cfg.threshold
    if not 0.0 <= tau <= 1.0:
        raise ConfigError(f"threshold={tau} is out of range for router=entropy (normalized, 0..1)")
    return tau


def _token_tau(cfg: RoutedConfig) -> float:
    tau = 0.45 if cfg.threshold is None else cfg.threshold
    if tau < 0:
        raise ConfigError(f"threshold={tau} must be >= 0 for router=entropy-token (nats)")
    return tau


@register_router("entropy", RouterKind.STITCH, check=_stitch_tau, knobs=("threshold",))
def _entropy(cfg: RoutedConfig, slm) -> Router:
    return EntropyStitch(_stitch_tau(cfg))


@register_router("entropy-token", RouterKind.TOKEN, check=_token_tau, knobs=("threshold",))
def _entropy_token(cfg: RoutedConfig, slm) -> Router:
    return EntropyToken(_token_tau(cfg))
