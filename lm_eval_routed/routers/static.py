"""Baselines: the SLM alone, the LLM alone, and random routing at a fixed rate (a control for any router)."""

from __future__ import annotations

import torch
from torch import Tensor

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.routers.base import Router, RouterKind, StepView, register_router


class Constant(Router):
    """Route every position to one model."""

    def __init__(self, name: str, to_llm: bool) -> None:
        self.name = name  # type: ignore[misc]
        self.to_llm = to_llm

    def route(self, slm: StepView) -> Tensor:
        return torch.full((slm.token.shape[0],), self.to_llm, dtype=torch.bool)

    def pre_route(self, gens: list[torch.Generator]) -> Tensor:
        return torch.full((len(gens),), self.to_llm, dtype=torch.bool)


class Random(Router):
    """Send each position to the LLM with probability ``p``, drawn from the row's own generator."""

    name = "random"

    def __init__(self, p: float) -> None:
        self.p = p

    def route(self, slm: StepView) -> Tensor:
        return self.pre_route(slm.gens)

    def pre_route(self, gens: list[torch.Generator]) -> Tensor:
        draws = [torch.rand((), generator=g).item() for g in gens]
        return torch.tensor([u < self.p for u in draws], dtype=torch.bool)

    def info(self) -> dict:
        return {**super().info(), "p": self.p}


@register_router("slm-only", RouterKind.TOKEN)
def _slm_only(cfg: RoutedConfig, slm) -> Router:
    return Constant("slm-only", to_llm=False)


@register_router("llm-only", RouterKind.TOKEN)
def _llm_only(cfg: RoutedConfig, slm) -> Router:
    return Constant("llm-only", to_llm=True)


@register_router("random", RouterKind.TOKEN, knobs=("p",))
def _random(cfg: RoutedConfig, slm) -> Router:
    return Random(cfg.p)
