"""R-Stitch+ (arXiv 2507.17307): entropy stitching whose switches a learned policy approves.

While the SLM holds control, a position whose normalized entropy H / log V exceeds tau consults a small
policy network on the SLM's state there; argmax of its two actions (0: the SLM keeps the position,
1: switch) decides. On a switch the SLM's token is dropped, the LLM regenerates it and keeps control
until it writes a token with entropy <= tau (the fixed rule, as `entropy`). Below tau the SLM keeps the
position without asking. Only consultations are router calls (``router_calls``, charged
``params_router`` each); the hand-back rule is not the network.

The paper leaves the network open; ours (its sizes and scale are the checkpoint's ``config.json``):
features [h, n / context_scale], h the SLM's last-layer hidden state after the final norm at the
position, n the tokens before it (prompt + generated); Linear(H + 1, width), ReLU, Linear(width, 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.base import (
    Decisions,
    RouterKind,
    StepView,
    file_sha256,
    register_router,
)
from lm_eval_routed.routers.entropy import EntropyStitch

KIND = "rstitch-plus"
SWITCH = 1  # the policy's action index for "the LLM takes this position" (0: the SLM keeps it)


class PolicyNet(nn.Module):
    """Action logits (b, 2), stay or switch, from the SLM's hidden state and the context length."""

    def __init__(self, hidden_size: int, width: int = 256, context_scale: float = 4096.0) -> None:
        super().__init__()
        if not (isinstance(context_scale, int | float) and context_scale > 0):
            raise ConfigError(f"context_scale={context_scale!r} must be a positive number")
        self.context_scale = float(context_scale)
        self.inp = nn.Linear(hidden_size + 1, width)
        self.out = nn.Linear(width, 2)

    def features(self, hidden: Tensor, context: Tensor) -> Tensor:
        """(b, H + 1): the hidden state beside the context length over ``context_scale``."""
        scaled = context.to(hidden).unsqueeze(-1) / self.context_scale
        return torch.cat([hidden, scaled], dim=-1)

    def logits_of(self, features: Tensor) -> Tensor:
        """(b, 2) action logits from ``features`` rows (b, H + 1): training replays stored ones."""
        return self.out(torch.relu(self.inp(features)))

    def forward(self, hidden: Tensor, context: Tensor) -> Tensor:
        return self.logits_of(self.features(hidden, context))


def net_of(cfg: dict[str, Any]) -> PolicyNet:
    """The policy network a checkpoint's config describes (weights not loaded)."""
    if "hidden_size" not in cfg:
        raise ConfigError("records no hidden_size (the SLM's)")
    width = cfg.get("width", 256)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"width={width!r} must be a positive integer")
    return PolicyNet(cfg["hidden_size"], width, cfg.get("context_scale", 4096.0))


class RStitchPlus(EntropyStitch):
    """Switch to the LLM where the SLM's entropy exceeds tau and the policy says so."""

    name = KIND
    reads_context = True

    def __init__(self, net: PolicyNet, threshold: float, info: dict) -> None:
        super().__init__(threshold)
        self.net = net.eval()
        self._info = info

    @torch.inference_mode()
    def route_step(self, slm: StepView) -> Decisions:
        above = self._normalized(slm) > self.threshold  # "exceeds tau": the only positions asked
        switch = torch.zeros_like(above)
        if bool(above.any()):
            if slm.context is None:
                raise RuntimeError("rstitch-plus needs the context length in the step's view")
            dtype = next(self.net.parameters()).dtype
            features = self.net.features(
                slm.hidden[above].to(dtype), slm.context.to(above.device)[above]
            )
            asked = above.nonzero().flatten().tolist()
            switch[above] = self.act(features, slm, asked).to(switch.device)
        return Decisions(switch.cpu(), above.int().tolist())

    def act(self, features: Tensor, slm: StepView, asked: list[int]) -> Tensor:
        """(n,) bool, switch or not, at the ``asked`` rows of ``slm`` (features (n, H + 1)):
        the argmax action; a tie keeps the SLM (index 0 first). Training samples instead."""
        return self.net.logits_of(features).argmax(-1) == SWITCH

    def route(self, slm: StepView) -> Tensor:
        return self.route_step(slm).chosen

    def keep_step(self, llm: StepView) -> Decisions:
        # the hand-back is R-Stitch's fixed rule, not a consultation of the network
        return Decisions(self.keep_llm(llm), [0] * llm.token.shape[0])

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def info(self) -> dict:
        return {**super().info(), **self._info}


def _slm_sizes(ref: str) -> tuple[int | None, int | None] | None:
    """The SLM's hidden and vocabulary sizes from a local folder's config.json (None: not at hand
    without loading, e.g. a hub id, a GGUF file or the demo pair; the build checks those)."""
    folder = Path(ref.removeprefix("random:"))
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    return text.get("hidden_size"), text.get("vocab_size")


def _check_pair(ckpt: dict[str, Any], slm_ref: str, where: Path) -> None:
    """Refuse a checkpoint of another SLM by its sizes, before any model loads."""
    sizes = _slm_sizes(slm_ref)
    if sizes is None:
        return
    hidden, vocab = sizes
    if hidden is not None and ckpt.get("hidden_size") != hidden:
        raise ConfigError(
            f"{where}: trained for SLM hidden size {ckpt.get('hidden_size')}, but slm={slm_ref!r} "
            f"has {hidden}; use a router trained for this pair"
        )
    if vocab is not None and ckpt.get("vocab_size") not in (None, vocab):
        raise ConfigError(
            f"{where}: trained for a vocabulary of {ckpt['vocab_size']}, but slm={slm_ref!r} has "
            f"{vocab}; use a router trained for this pair"
        )


def _tau(cfg: RoutedConfig, ckpt: dict[str, Any]) -> tuple[float, str]:
    """tau and where it came from: given, or the checkpoint's (normalized entropy, 0..1)."""
    if cfg.threshold is not None:
        tau, rule = cfg.threshold, "given"
    elif ckpt.get("threshold") is not None:
        tau, rule = ckpt["threshold"], "checkpoint"
    else:
        raise ConfigError("the rstitch-plus checkpoint records no threshold (tau); pass threshold=")
    if not (math.isfinite(tau) and 0.0 <= tau <= 1.0):
        raise ConfigError(f"threshold={tau} is out of range for router={KIND} (normalized, 0..1)")
    return float(tau), rule


def _folder(cfg: RoutedConfig) -> Path:
    folder = checkpoint.resolve(cfg.router_ckpt, KIND)
    if not folder.is_dir():
        raise ConfigError(
            f"router={KIND} takes a router_ckpts/<name>/ folder (config.json + model.safetensors), "
            f"not the file {folder}"
        )
    return folder


def _check(cfg: RoutedConfig) -> None:
    """Refuse, before the models load, a checkpoint that cannot make this router for this SLM."""
    _folder(cfg)
    ckpt = checkpoint.check(cfg.router_ckpt, KIND, build=net_of)
    _tau(cfg, ckpt)
    _check_pair(ckpt, cfg.slm, checkpoint.resolve(cfg.router_ckpt, KIND))


@register_router(KIND, RouterKind.STITCH, check=_check, knobs=("router_ckpt", "threshold"))
def _rstitch_plus(cfg: RoutedConfig, slm) -> RStitchPlus:
    _folder(cfg)
    ckpt, state, weights = checkpoint.load(cfg.router_ckpt, KIND)
    checkpoint.check_fits(ckpt, slm, KIND)
    try:
        net = net_of(ckpt)
        net.load_state_dict(state)
    except ConfigError as err:
        raise ConfigError(f"{weights.parent / 'config.json'}: {err}") from None
    except RuntimeError as err:  # names or shapes that are not the config's network
        raise ConfigError(
            f"{weights} does not fit its config: {str(err).splitlines()[0]}"
        ) from None
    tau, rule = _tau(cfg, ckpt)
    return RStitchPlus(
        net.to(next(slm.parameters()).device),
        tau,
        {
            "router_ckpt": str(weights),
            "router_ckpt_sha256": file_sha256(str(weights)),
            "threshold_rule": rule,
            "width": net.inp.out_features,
            "context_scale": net.context_scale,
        },
    )
