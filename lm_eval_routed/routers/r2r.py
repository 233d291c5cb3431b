"""R2R's neural router (arXiv 2505.21600): which SLM tokens diverge enough for the LLM to write them.

Inputs, all from the SLM at this step: its last-layer hidden state, its proposed token embedded with the
SLM's own (frozen, not stored) input embedding, and its top-100 raw logits sorted descending (values
only). Linear(100 -> H) projects the logits; [hidden, token embedding, projected logits] -> Linear ->
width; ``blocks`` pre-LayerNorm residual MLPs (width -> 4 width -> width, GELU, dropout); LayerNorm;
Linear -> 1. The LLM writes the position when sigmoid(score) >= threshold.

R2R's released ``.pt`` routers (``HiddenStatesTokenLMHeadLogitsClassifier``: an extra input projection,
per-block widths ``hidden_dims``, optional input normalisation) load into ``OfficialR2RNet``, whose
parameter names are theirs; an official-style dict holding our own key names loads into ``R2RNet``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.base import (
    Router,
    RouterKind,
    StepView,
    file_sha256,
    register_router,
)


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


class _OfficialBlock(nn.Module):
    """dim_change(x) + MLP(LayerNorm(x)); attribute names follow R2R's released state dicts."""

    def __init__(self, d_in: int, d_out: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_in)
        self.mlp = nn.Sequential(
            nn.Linear(d_in, d_in * expansion),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_in * expansion, d_out),
            nn.Dropout(dropout),
        )
        self.dim_change = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.dim_change(x) + self.mlp(self.layer_norm(x))


class _OfficialBackbone(nn.Module):
    def __init__(self, dims: list[int], expansion: int, dropout: float) -> None:
        super().__init__()
        self.input_projection = nn.Linear(dims[0], dims[0])
        steps = [*dims, dims[-1]]  # the last block keeps its width
        self.blocks = nn.ModuleList(
            _OfficialBlock(a, b, expansion, dropout) for a, b in zip(steps[:-1], steps[1:])
        )
        self.output_layer = nn.Sequential(nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_projection(x)
        for block in self.blocks:
            x = block(x)
        return self.output_layer(x)


OFFICIAL_TYPE = "HiddenStatesTokenLMHeadLogitsClassifier"


class OfficialR2RNet(nn.Module):
    """The layout of R2R's released routers (``HiddenStatesTokenLMHeadLogitsClassifier``).

    Same inputs as ``R2RNet``; widths per block come from ``hidden_dims``, there is an extra input
    projection, and ``normalize_input`` adds LayerNorms on hidden state and token embedding and a
    softmax over the top-k logits. The token embedding is the SLM's (dropped from their files too).
    """

    def __init__(
        self,
        hidden_states_size: int,
        logits_size: int = 100,
        hidden_dims: list[int] | tuple[int, ...] = (256, 512, 256),
        expansion_factor: int = 4,
        dropout_rate: float = 0.3,
        normalize_input: bool = False,
    ) -> None:
        super().__init__()
        h, dims = hidden_states_size, list(hidden_dims)
        self.top_k, self.normalize_input = logits_size, normalize_input
        if normalize_input:
            self.layer_norm_hidden_states = nn.LayerNorm(h)
            self.layer_norm_token = nn.LayerNorm(h)
        self.logits_projection = nn.Linear(logits_size, h)
        self.combined_projection = nn.Linear(3 * h, dims[0])
        self.backbone = _OfficialBackbone(dims, expansion_factor, dropout_rate)

    def forward(self, hidden: Tensor, token_emb: Tensor, logits: Tensor) -> Tensor:
        top = logits.topk(self.top_k, dim=-1).values  # (b, k), sorted descending
        if self.normalize_input:
            hidden = self.layer_norm_hidden_states(hidden)
            token_emb = self.layer_norm_token(token_emb)
            top = top.softmax(-1)
        x = torch.cat([hidden, token_emb, self.logits_projection(top)], dim=-1)
        return self.backbone(self.combined_projection(x)).squeeze(-1)


def _official_net(ckpt: dict) -> OfficialR2RNet:
    """Build the released layout from a checkpoint's ``init_args`` (unsupported options: one line)."""
    if ckpt.get("use_position_embedding"):
        raise ConfigError("R2R checkpoints with use_position_embedding=True are not supported")
    keys = ("logits_size", "hidden_dims", "expansion_factor", "dropout_rate", "normalize_input")
    return OfficialR2RNet(ckpt["hidden_states_size"], **{k: ckpt[k] for k in keys if k in ckpt})


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


# R2R's released files carry the SLM's token embedding, which the router takes from the SLM itself
_EMBEDDING_KEY = "token_embeddings.weight"


def _net_of(ckpt: dict) -> nn.Module:
    """The network a checkpoint's config describes, weights not loaded."""
    official = ckpt.get("official_model_type")
    if official not in (None, OFFICIAL_TYPE) and "hidden_size" not in ckpt:
        raise ConfigError(
            f"the checkpoint holds an R2R {official!r} router; only {OFFICIAL_TYPE} is supported"
        )
    if "hidden_states_size" in ckpt:  # R2R's released layout
        return _official_net(ckpt)
    # our layout (our folders, or an official-style dict holding our key names)
    return R2RNet(**{k: ckpt[k] for k in ARCH_KEYS if k in ckpt})


def _check(cfg: RoutedConfig) -> None:
    """Refuse a threshold outside [0, 1] and a checkpoint whose files do not make an R2R router."""
    checkpoint.check_threshold(cfg.threshold, "r2r")
    checkpoint.check(cfg.router_ckpt, "r2r", build=_net_of, ignore=(_EMBEDDING_KEY,))


@register_router("r2r", RouterKind.TOKEN, check=_check, knobs=("router_ckpt", "threshold"))
def _r2r(cfg: RoutedConfig, slm) -> Router:
    checkpoint.check_threshold(cfg.threshold, "r2r")
    ckpt, state, weights = checkpoint.load(cfg.router_ckpt, "r2r")
    net = _net_of(ckpt)
    if "hidden_states_size" in ckpt:
        ckpt = {**ckpt, "hidden_size": ckpt["hidden_states_size"]}
        state = {k: v for k, v in state.items() if k != _EMBEDDING_KEY}
    checkpoint.check_fits(ckpt, slm, "r2r")
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ from the config's sizes
        raise ConfigError(f"{weights} does not fit the R2R router: {err}".split("\n")[0]) from None
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
