"""R2R's neural router (arXiv 2505.21600): which SLM tokens diverge enough for the LLM to write them.

Inputs, all from the SLM at this step: its last-layer hidden state, its proposed token embedded with the
SLM's own (frozen, not stored) input embedding, and its top-100 raw logits sorted descending (values
only). Linear(100 -> H) projects the logits; [hidden, token embedding, projected logits] -> Linear ->
width; ``blocks`` pre-LayerNorm residual MLPs (width -> 4 width -> width, GELU, dropout); LayerNorm;
Linear -> 1. The LLM writes the position when sigmoid(score) >= threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lm_eval_routed.config import ConfigError, RoutedConfig
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.base import Router, StepView, file_sha256, register_router


class ResidualMLP(nn.Module):
    """x + MLP(LayerNorm(x))."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.down(nn.functional.gelu(self.up(self.norm(x)))))


class R2RNet(nn.Module):
    """Scores (b,) logits from SLM features; sizes follow the paper by default (56M at H=1536)."""

    def __init__(
        self,
        hidden_size: int,
        width: int = 1024,
        blocks: int = 6,
        top_k: int = 100,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.logit_proj = nn.Linear(top_k, hidden_size)
        self.inp = nn.Linear(3 * hidden_size, width)
        self.blocks = nn.ModuleList(ResidualMLP(width, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)

    def forward(self, hidden: Tensor, token_emb: Tensor, logits: Tensor) -> Tensor:
        top = logits.topk(self.top_k, dim=-1).values  # (b, k), sorted descending
        x = self.inp(torch.cat([hidden, token_emb, self.logit_proj(top)], dim=-1))  # (b, width)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x)).squeeze(-1)


class R2RRouter(Router):
    """Route where the trained network says the SLM token diverges."""

    name = "r2r"

    def __init__(self, net: R2RNet, embedding: nn.Module, threshold: float, info: dict) -> None:
        self.net = net.eval()
        self.embedding = embedding  # the SLM's own input embedding, used frozen
        self.threshold = threshold
        self._info = info

    @torch.inference_mode()
    def route(self, slm: StepView) -> Tensor:
        dtype = next(self.net.parameters()).dtype
        emb = self.embedding(slm.token.to(slm.hidden.device))
        score = self.net(slm.hidden.to(dtype), emb.to(dtype), slm.logits.to(dtype))
        return (torch.sigmoid(score) >= self.threshold).cpu()

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def info(self) -> dict:
        return {**super().info(), **self._info}


ARCH_KEYS = ("hidden_size", "width", "blocks", "top_k")


@register_router("r2r")
def _r2r(cfg: RoutedConfig, slm) -> Router:
    ckpt, state, weights = checkpoint.load(cfg.router_ckpt, "r2r")
    checkpoint.check_fits(ckpt, slm, "r2r")
    net = R2RNet(**{k: ckpt[k] for k in ARCH_KEYS if k in ckpt})
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{weights} does not fit the R2R router: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    device = next(slm.parameters()).device
    threshold = cfg.threshold if cfg.threshold is not None else ckpt.get("threshold")
    if threshold is None:
        raise ConfigError("the r2r checkpoint records no threshold; pass threshold=")
    return R2RRouter(
        net.to(device),
        slm.get_input_embeddings(),
        float(threshold),
        {
            "router_ckpt": str(weights),
            "router_ckpt_sha256": file_sha256(str(weights)),
            "threshold_rule": ckpt.get("threshold_rule") if cfg.threshold is None else "given",
        },
    )
