"""CITER's router (arXiv 2502.01976): an MLP on the SLM's last hidden state.

h -> 2h -> h -> 1 with BatchNorm, ReLU and dropout; sigmoid(score) is the confidence that the SLM's
token is fine, so the LLM writes the position when it falls below the threshold (their default 0.9).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lm_eval_routed.config import ConfigError, RoutedConfig
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.base import Router, StepView, file_sha256, register_router


class CiterNet(nn.Module):
    """Confidence logit (b,) that the SLM's token at this position is good enough."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        h = hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(h, 2 * h),
            nn.BatchNorm1d(2 * h),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(2 * h, h),
            nn.BatchNorm1d(h),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(h, 1),
        )

    def forward(self, hidden: Tensor) -> Tensor:
        return self.mlp(hidden).squeeze(-1)


class CiterRouter(Router):
    """Route where the SLM is not confident enough in its own token."""

    name = "citer"

    def __init__(self, net: CiterNet, threshold: float, info: dict) -> None:
        self.net = net.eval()
        self.threshold = threshold
        self._info = info

    @torch.inference_mode()
    def route(self, slm: StepView) -> Tensor:
        dtype = next(self.net.parameters()).dtype
        return (torch.sigmoid(self.net(slm.hidden.to(dtype))) < self.threshold).cpu()

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def info(self) -> dict:
        return {**super().info(), **self._info}


def _check(cfg: RoutedConfig) -> None:
    """Refuse a threshold outside [0, 1] and a checkpoint whose files do not make a CITER router."""
    checkpoint.check_threshold(cfg.threshold, "citer")
    checkpoint.check(cfg.router_ckpt, "citer", build=lambda c: CiterNet(c["hidden_size"]))


@register_router("citer", check=_check, knobs=("router_ckpt", "threshold", "guess_ahead"))
def _citer(cfg: RoutedConfig, slm) -> Router:
    checkpoint.check_threshold(cfg.threshold, "citer")
    ckpt, state, weights = checkpoint.load(cfg.router_ckpt, "citer")
    checkpoint.check_fits(ckpt, slm, "citer")
    net = CiterNet(ckpt["hidden_size"])
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ from the config's sizes
        raise ConfigError(
            f"{weights} does not fit the CITER router: {err}".split("\n")[0]
        ) from None
    if missing or unexpected:
        raise ConfigError(f"{weights} does not fit the CITER router: missing {sorted(missing)[:3]}")
    threshold = cfg.threshold if cfg.threshold is not None else ckpt.get("threshold", 0.9)
    return CiterRouter(
        net.to(next(slm.parameters()).device),
        float(threshold),
        {
            "router_ckpt": str(weights),
            "router_ckpt_sha256": file_sha256(str(weights)),
            "threshold_rule": ckpt.get("threshold_rule") if cfg.threshold is None else "given",
        },
    )
