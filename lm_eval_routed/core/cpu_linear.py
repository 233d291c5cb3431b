"""Linear layers on prepacked oneDNN weights, for CPU inference.

PyTorch's default CPU path for ``nn.Linear`` (an MKL GEMM over the weight as stored) is slow at the few
rows a decode step has: on the 2-core AMD machine we measured, the demo pair's 49152 x 576 LM head took
18.7 ms at 8 rows against 4.5 ms on oneDNN with the weight reordered once into its blocked layout (the
same prepacking ``torch.compile``'s CPU freezing does), and whole forwards ran ~1.5x faster. Decoding
does mostly such steps, so both models of a routed run on CPU are prepacked by default (``prepack``).

Prepacking turns each ``nn.Linear`` of the model into a ``PackedLinear`` in place, so everything that
runs the model object (plain ``generate``, lm-eval's ``hf`` over it, the benchmark's baselines) gets the
same kernels and comparisons stay fair. Parameters, ``state_dict`` and training are untouched: the
packed copy is made on a layer's first no-grad CPU forward, used only there, and rebuilt if the weight
changes or is cast. It holds a second copy of every linear weight in memory (the native engine's
stacked copies stand in for those of the layers it stacks: ``native.py``).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

_PACKED = "_routed_packed"  # (packed weight, the weight's data_ptr and version when packed)
# oneDNN picks the packed layout for an expected row count: packed for 1 row, the LM head above ran
# at 8.8 ms for 8 rows instead of 5.6 ms; any hint from 4 up gave the faster layout at 1 to 64 rows.
_ROWS_HINT = 8


@functools.cache
def supported(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU run prepacked linears in ``dtype`` (checked on a tiny layer)."""
    try:
        weight, x = torch.randn(8, 16).to(dtype), torch.randn(3, 16).to(dtype)
        got = packed_linear(x, pack(weight), None)
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        return torch.allclose(got.float(), F.linear(x, weight).float(), atol=tol, rtol=tol)
    except (AttributeError, RuntimeError):  # op missing from this build, or dtype unsupported here
        return False


def pack(weight: Tensor) -> Tensor:
    """``weight`` (out, in) reordered once into oneDNN's blocked layout, for ``packed_linear``."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ROWS_HINT)


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` over a weight from ``pack``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _pack(module: nn.Linear) -> Tensor:
    packed = pack(module.weight)
    setattr(module, _PACKED, (packed, *weight_stamp(module.weight)))
    return packed


def weight_stamp(weight: Tensor) -> tuple[int, int]:
    """Where ``weight`` lives and how often it was written: a copy packed from it is stale once
    either changes."""
    return weight.data_ptr(), _version(weight)


def _version(weight: Tensor) -> int:
    # inference tensors (made under inference_mode, e.g. a copy taken there) keep no version counter
    return -1 if weight.is_inference() else weight._version


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose no-grad CPU forward runs on a prepacked copy of its weight.

    Prepacking turns a layer into this class in place. The packed copy is a cache: copies and pickles
    of the model leave it out (oneDNN's opaque tensors have no storage to copy) and rebuild it on
    their first forward.
    """

    def forward(self, x: Tensor) -> Tensor:
        """The prepacked kernel where it applies, else ``nn.Linear``'s own."""
        if x.device.type != "cpu" or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)  # moved, or training: the plain path
        cached = getattr(self, _PACKED, None)
        if cached is None or x.dtype != cached[0].dtype:
            if x.dtype != self.weight.dtype or not supported(x.dtype):
                return F.linear(x, self.weight, self.bias)  # cast: the plain path
            return packed_linear(x, _pack(self), self.bias)
        packed, *stamp = cached
        if tuple(stamp) != weight_stamp(self.weight):
            packed = _pack(self)  # the weight was replaced or written in place
        return packed_linear(x, packed, self.bias)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop(_PACKED, None)
        return state


def prepack_linears(model: nn.Module) -> int:
    """Run ``model``'s linear layers on prepacked weights; returns how many (0 where unsupported).

    Each layer packs its weight on its first forward, so layers whose work an engine does otherwise
    (``native`` stacks q/k/v and gate/up) never hold a copy. Layers off the CPU, in a dtype this CPU's
    oneDNN lacks (fp16 needs AVX512-FP16), or of a subclass of ``nn.Linear`` (whose own forward must
    stay) are left as they are.
    """
    linears = [
        m
        for m in model.modules()
        if type(m) in (nn.Linear, PackedLinear) and m.weight.device.type == "cpu"
    ]
    for dtype in {m.weight.dtype for m in linears if not supported(m.weight.dtype)}:
        log.info("prepacked linears unavailable for %s here; using torch's default", dtype)
    linears = [m for m in linears if supported(m.weight.dtype)]
    for module in linears:
        module.__class__ = PackedLinear
    return len(linears)


def release(module: nn.Module) -> None:
    """Free ``module``'s packed copy; a ``PackedLinear`` packs again on its next forward."""
    module.__dict__.pop(_PACKED, None)


def is_prepacked(model: nn.Module) -> bool:
    """Whether any of ``model``'s linear layers runs on a prepacked weight now."""
    return any(isinstance(m, PackedLinear) for m in model.modules())


def unpack_linears(model: nn.Module) -> None:
    """Undo ``prepack_linears``: plain ``nn.Linear`` layers, packed copies freed."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            release(module)
            module.__class__ = nn.Linear
