"""Linear layers on prepacked oneDNN weights, for CPU inference.

PyTorch's default CPU path for ``nn.Linear`` (an MKL GEMM over the weight as stored) is slow at the few
rows a decode step has; oneDNN with the weight reordered once into its blocked layout (the same
prepacking ``torch.compile``'s CPU freezing does) runs the same products several times faster there
(docs/performance.md). Decoding does mostly such steps, so both models' engines run prepacked by
default (``prepack``).

Prepacking applies to module trees an engine owns (``engine.shared_weights_copy``), never to the
caller's model: ``prepack_linears`` turns their ``nn.Linear`` layers into ``PackedLinear``, whose
no-grad CPU forward reads a packed copy of the weight. The packed copy is made on a layer's first such
forward and rebuilt if the weight changes or is cast. Packed copies are shared: every layer over the
same weight (two engines over one model, say) reads one copy, which lives as long as some layer holds
it. It is a second copy of the weight in memory, beside the caller's own.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

log = logging.getLogger(__name__)

_HELD = "_routed_packed"  # the PackedWeight a PackedLinear reads
# oneDNN picks the packed layout for an expected row count: packed for 1 row, the demo pair's LM head
# ran slower at 8 rows; any hint from 4 up gave the faster layout at 1 to 64 rows.
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


def weight_stamp(weight: Tensor) -> tuple[int, int]:
    """Where ``weight`` lives and how often it was written: a copy packed from it is stale once
    either changes."""
    return weight.data_ptr(), _version(weight)


def _version(weight: Tensor) -> int:
    # inference tensors (made under inference_mode, e.g. a copy taken there) keep no version counter
    return -1 if weight.is_inference() else weight._version


@dataclass(eq=False)
class PackedWeight:
    """A weight's packed copy and the stamp of the weight it was packed from."""

    packed: Tensor
    stamp: tuple[int, int]


# weight -> a weak reference to its PackedWeight: the layers reading a copy keep it alive, this only
# finds it for the next layer over the same weight. Keyed by identity, and gone with the weight.
_SHARED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def packed_weight(weight: Tensor) -> PackedWeight:
    """The packed copy of ``weight``: the one another layer reads if it is current, else a new one."""
    ref = _SHARED.get(weight)
    packed_w = ref() if ref is not None else None
    if (
        packed_w is None
        or packed_w.stamp != weight_stamp(weight)
        or packed_w.packed.dtype != weight.dtype
    ):
        packed_w = PackedWeight(pack(weight), weight_stamp(weight))
        _SHARED[weight] = weakref.ref(packed_w)
    return packed_w


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose no-grad CPU forward runs on a prepacked copy of its weight.

    The copy is a cache (``packed_weight``): copies and pickles of the module leave it out (oneDNN's
    opaque tensors have no storage to copy) and find or rebuild it on their first forward.
    """

    def forward(self, x: Tensor) -> Tensor:
        """The prepacked kernel where it applies, else ``nn.Linear``'s own."""
        if x.device.type != "cpu" or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)  # moved, or training: the plain path
        if x.dtype != self.weight.dtype or not supported(x.dtype):
            return F.linear(x, self.weight, self.bias)  # cast: the plain path
        packed_w = self.__dict__.get(_HELD)
        if (
            packed_w is None
            or packed_w.stamp != weight_stamp(self.weight)
            or packed_w.packed.dtype != x.dtype
        ):
            packed_w = self.__dict__[_HELD] = packed_weight(self.weight)
        return packed_linear(x, packed_w.packed, self.bias)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop(_HELD, None)
        return state


def prepack_linears(model: nn.Module) -> int:
    """Run the linear layers of ``model`` (a module tree of one's own) on prepacked weights; returns
    how many (0 where unsupported).

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
    """Let go of ``module``'s packed copy (freed once no other layer reads it); a ``PackedLinear``
    finds or packs one again on its next forward."""
    module.__dict__.pop(_HELD, None)


def holds_packed(module: nn.Module) -> bool:
    """Whether ``module`` holds a packed copy of its weight now."""
    return _HELD in module.__dict__
