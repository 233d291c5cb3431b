"""Lossless speculative decoding as a routing policy: the SLM drafts ``gamma`` tokens, the LLM verifies.

The output is the LLM's own (greedy: token for token; sampling: the same distribution, by the standard
accept/resample rule). The decoder owns drafting and verification; this router only names its kind.
"""

from __future__ import annotations

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.routers.base import Router, RouterKind, register_router


class Speculative(Router):
    """Marker policy: the decoder drafts ``gamma`` SLM tokens per LLM verification."""

    name = "speculative"
    kind = RouterKind.SPECULATIVE

    def __init__(self, gamma: int) -> None:
        self.gamma = gamma

    def info(self) -> dict:
        return {**super().info(), "gamma": self.gamma}


@register_router("speculative", RouterKind.SPECULATIVE, knobs=("gamma",))
def _speculative(cfg: RoutedConfig, slm) -> Router:
    return Speculative(cfg.gamma)
