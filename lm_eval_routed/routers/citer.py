"""CITER's router (arXiv 2502.01976): an MLP on the SLM's last hidden state.

The authors' network is torchvision's ``MLP(h, [2h, h], norm_layer=BatchNorm1d, activation_layer=ReLU,
dropout=0.1)`` followed by ``Linear(h, 1)``. torchvision puts norm and activation after every hidden layer
but the last and dropout after each, so the layers are Linear(h, 2h), BatchNorm, ReLU, Dropout,
Linear(2h, h), Dropout, then Linear(h, 1). ``CiterNet`` builds that from ``torch.nn`` with the same
parameter names (``mlp.0``, ``mlp.1``, ``mlp.4``, ``linear``), so the authors' ``mlp_iter_*.pth`` state
dicts load as they are. sigmoid(score) is the confidence that the SLM's token is fine; the LLM writes the
position when it falls below the threshold (0.9 in the authors' README).
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

DEFAULT_THRESHOLD = 0.9
# parameter names of the earlier layout (BatchNorm and ReLU after the second layer too)
_EARLIER_LAYOUT = ("mlp.5.running_mean", "mlp.8.weight")


class CiterNet(nn.Module):
    """Confidence logit (b,) that the SLM's token at this position is good enough."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        h = hidden_size
        # torchvision's MLP(h, [2h, h], BatchNorm1d, ReLU, dropout) as the same Sequential
        self.mlp = nn.Sequential(
            nn.Linear(h, 2 * h),
            nn.BatchNorm1d(2 * h),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(2 * h, h),
            nn.Dropout(dropout),
        )
        self.linear = nn.Linear(h, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(self.mlp(hidden)).squeeze(-1)


def hidden_size_of(state: dict[str, Tensor], source: object) -> int:
    """The SLM hidden size a CITER state dict was trained for (the first layer's input width)."""
    first = state.get("mlp.0.weight")
    if not isinstance(first, Tensor) or first.dim() != 2:
        raise ConfigError(
            f"{source} is not a CITER router state dict (no 2-D 'mlp.0.weight'); "
            "expected the layout of the authors' mlp_iter_*.pth files"
        )
    return int(first.shape[1])


def _refuse_earlier_layout(names: dict, source: object) -> None:
    """One line for a checkpoint in the earlier layout, which cannot be converted."""
    if all(k in names for k in _EARLIER_LAYOUT):
        raise ConfigError(
            f"{source} holds the earlier CITER layout (BatchNorm and ReLU after the second layer "
            "too), which computes other confidences; retrain it with `lm-eval-routed train citer`"
        )


def check_layout(state: dict[str, Tensor], net: CiterNet, source: object) -> None:
    """Refuse, in one line, a state dict whose names or shapes are not ``net``'s."""
    _refuse_earlier_layout(state, source)
    want = net.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise ConfigError(
            f"{source} does not fit CITER's router layout: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for key, value in want.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ConfigError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, CITER's router for hidden "
                f"size {net.linear.in_features} needs {tuple(value.shape)}"
            )


class CiterRouter(Router):
    """Route where the SLM is not confident enough in its own token."""

    name = "citer"

    def __init__(self, net: CiterNet, threshold: float, info: dict) -> None:
        self.net = net.eval()
        self.threshold = threshold
        self._info = info

    @torch.inference_mode()
    def confidence(self, slm: StepView) -> Tensor:
        """(b,) sigmoid confidence that the SLM's token is good enough."""
        dtype = next(self.net.parameters()).dtype
        return torch.sigmoid(self.net(slm.hidden.to(dtype)))

    def route(self, slm: StepView) -> Tensor:
        return (self.confidence(slm) < self.threshold).cpu()

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def info(self) -> dict:
        return {**super().info(), **self._info}


def _check(cfg: RoutedConfig) -> None:
    """Refuse a threshold outside [0, 1] and a checkpoint whose files do not make a CITER router,
    before the models load (a folder by its safetensors header, an authors' file by its tensors)."""
    checkpoint.check_threshold(cfg.threshold, "citer")
    if checkpoint.resolve(cfg.router_ckpt, "citer").is_dir():
        try:
            checkpoint.check(cfg.router_ckpt, "citer", build=lambda c: CiterNet(c["hidden_size"]))
        except ConfigError:
            weights = checkpoint.resolve(cfg.router_ckpt, "citer") / "model.safetensors"
            if weights.is_file():
                _refuse_earlier_layout(
                    checkpoint.safetensors_shapes(weights, "citer router"), weights
                )
            raise
        return
    _, state, weights = checkpoint.load(cfg.router_ckpt, "citer")
    with torch.device("meta"):  # shapes only, nothing allocated
        net = CiterNet(hidden_size_of(state, weights))
    check_layout(state, net, weights)


@register_router("citer", RouterKind.TOKEN, check=_check, knobs=("router_ckpt", "threshold"))
def _citer(cfg: RoutedConfig, slm) -> Router:
    checkpoint.check_threshold(cfg.threshold, "citer")
    ckpt, state, weights = checkpoint.load(cfg.router_ckpt, "citer")
    ckpt.setdefault("hidden_size", hidden_size_of(state, weights))
    checkpoint.check_fits(ckpt, slm, "citer")
    net = CiterNet(ckpt["hidden_size"])
    check_layout(state, net, weights)
    net.load_state_dict(state)
    stored = ckpt.get("threshold")
    if cfg.threshold is not None:
        threshold, rule = cfg.threshold, "given"
    elif stored is not None:
        threshold, rule = stored, ckpt.get("threshold_rule")
    else:
        threshold, rule = DEFAULT_THRESHOLD, "CITER's default (none stored in the checkpoint)"
    return CiterRouter(
        net.to(next(slm.parameters()).device),
        float(threshold),
        {
            "router_ckpt": str(weights),
            "router_ckpt_sha256": file_sha256(str(weights)),
            "threshold_rule": rule,
        },
    )
