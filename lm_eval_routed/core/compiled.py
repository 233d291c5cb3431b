"""The decode step at static shapes, compiled: every row brings exactly one new token.

The packed path (``engine.py``, ``cache.py``) serves any mix of rows and token counts and pays for it
in Python on every call: a plan built from lists, a branch per layer on the attention layout, a dozen
small ops per layer each dispatched from Python. A step where each row feeds one token (the SLM's step
on every token, the LLM's plain decode) needs none of that. ``CompiledStep`` runs it as one function
over all layers at fixed shapes, which ``torch.compile`` turns into one graph (CPU: inductor's C++
kernels, its default mode; CUDA: captured in a CUDA graph, mode "reduce-overhead"):

  * the batch is padded to a bucket (1, 2, 4, 8, ...): padding rows write to the cache's trash row and
    their outputs are dropped, so a run compiles at most one graph per bucket (``bucket``);
  * each row's position is a tensor, the mask is built from it with tensor ops (slot <= position)
    over the cache's whole capacity, and the capacity is rounded up (``CAPACITY_STEP``) so that runs
    of similar lengths share graphs;
  * keys and values go in with one index op per buffer (``cache.write_one``) into the same
    ``RowKVCache`` the packed path reads and writes: a row prefills there and decodes here.

Forwards with more than one new token (prefill, catch-up, verifying drafts) stay on the packed path.
The step runs ``NativeEngine``'s own layer code (``native.attention_inputs``, ``layer_output``) over
its weights, so it covers the Llama family; ``compile_engine`` leaves any other engine eager. On the
CPU the prepacked oneDNN products run as one opaque op (``packed_linear``): inductor lowers oneDNN's
kernel only over weights it packed itself (frozen constants), which would hold a third copy of them.

Numerics: inductor fuses the elementwise ops (RMSNorm, rotary positions, SiLU, residuals) and keeps
them in float32 between ops, so logits agree with the eager engine's to rounding, not bitwise
(tests/test_compiled_engine.py states the tolerance). Attention reads every slot of the capacity,
masked, as gpt-fast's decode does: at long contexts a kernel that stops at each row's length (flash
decoding) would read less; on CUDA the cache's buffers are marked static for graph capture and a new
cache re-records the graphs (untested here: no GPU ran this).
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_eval_routed.core import cpu_linear
from lm_eval_routed.core.cache import RowKVCache, additive, write_one
from lm_eval_routed.core.engine import ForwardOut, HFEngine
from lm_eval_routed.core.native import (
    NativeEngine,
    _Layer,
    attention_inputs,
    layer_output,
    rms_norm,
)

log = logging.getLogger(__name__)

CAPACITY_STEP = 256  # cache capacities round up to this: one set of graphs serves nearby lengths


@torch.library.custom_op("lm_eval_routed::packed_linear", mutates_args=())
def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``cpu_linear.packed_linear`` as an op the compiler calls as it is (module docstring)."""
    return cpu_linear.packed_linear(x, packed, bias)


@packed_linear.register_fake
def _(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0])  # a packed weight keeps its (out, in) shape


def bucket(rows: int) -> int:
    """The batch a step of ``rows`` rows runs at: the next power of two."""
    return 1 << (rows - 1).bit_length()


def _linear(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """``module``'s product as the compiled step runs it: on the packed copy a ``PackedLinear``
    reads (the shared one, found or made now), else over its weight in place."""
    weight, bias = module.weight, module.bias
    if isinstance(module, cpu_linear.PackedLinear) and cpu_linear.supported(weight.dtype):
        packed = cpu_linear.packed_weight(weight).packed
        return lambda x: packed_linear(x, packed, bias)
    return lambda x: F.linear(x, weight, bias)


def _stacked(matmul) -> Callable[[Tensor], Tensor]:
    """A ``native._Matmul`` (q/k/v or gate/up side by side) as the compiled step runs it."""
    packed, bias = matmul.stack.packed, matmul.bias
    if packed is not None:
        return lambda x: packed_linear(x, packed, bias)
    pairs = list(zip(matmul.weights, matmul.biases))
    return lambda x: torch.cat([F.linear(x, w, b) for w, b in pairs], dim=-1)


def _traceable(layer: _Layer) -> _Layer:
    """A copy of ``layer`` whose products the compiler can trace (no per-call weight lookups)."""
    out = copy.copy(layer)
    out.qkv, out.gate_up = _stacked(layer.qkv), _stacked(layer.gate_up)
    out.o_proj, out.down_proj = _linear(layer.o_proj), _linear(layer.down_proj)
    return out


def _fresh(fn: Callable) -> Callable:
    """``fn`` over a code object of its own: the compiler keeps its graphs, and its limit on
    recompiles, per code object, so each cache shape gets its own and never evicts another's."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, None, None)


class CompiledStep:
    """One-token-per-row decode steps of a ``NativeEngine``, at static shapes (module docstring)."""

    def __init__(self, engine: NativeEngine) -> None:
        self.engine = engine
        self.layers = [_traceable(layer) for layer in engine.layers]
        self.head = _linear(engine.head)
        self.cuda = engine.device.type == "cuda"
        self.steps = 0  # steps run here (run info)
        self.graphs: set[tuple] = set()  # (bucket, cache shape): one graph each
        self._by_shape: dict[tuple, Callable] = {}  # a compiled function per cache shape

    @staticmethod
    def takes(tokens: list[list[int]], all_logits: bool, at, whole_head: bool) -> bool:
        """Whether an ``HFEngine.forward`` call is a decode step this path runs."""
        return at is None and not all_logits and not whole_head and all(len(t) == 1 for t in tokens)

    @staticmethod
    def room(capacity: int) -> int:
        """The capacity a cache is built with (``CAPACITY_STEP``)."""
        return -(-capacity // CAPACITY_STEP) * CAPACITY_STEP

    @torch.inference_mode()
    def __call__(
        self, cache: RowKVCache, rows: list[int], lengths: list[int], tokens: list[int]
    ) -> ForwardOut:
        """Feed ``tokens[i]`` to slot ``rows[i]`` whose cache holds ``lengths[i]`` tokens."""
        b, engine = len(rows), self.engine
        n = bucket(b)
        assert max(lengths) < cache.capacity, "a row's token past the cache's capacity"
        pad = n - b  # padding rows: the pad token at slot 0 of the trash row, never read
        flat = torch.tensor(
            [*tokens, *[engine.pad_id] * pad, *rows, *[cache.batch] * pad, *lengths, *[0] * pad],
            device=engine.device,
        )
        ids, slots, positions = flat.view(3, n)
        keys, values = self._buffers(cache)
        shape = tuple(keys[0].shape)
        fn = self._by_shape.get(shape)
        if fn is None:
            mode = "reduce-overhead" if self.cuda else None  # CUDA graphs; CPU: inductor's default
            fn = torch.compile(_fresh(_step), dynamic=False, fullgraph=True, mode=mode)
            self._by_shape[shape] = fn
        self.graphs.add((n, shape))
        self.steps += 1
        logits, hidden = fn(self, ids, slots, positions, keys, values)
        if self.cuda:  # a CUDA graph's outputs are overwritten by its next replay
            logits, hidden = logits.clone(), hidden.clone()
        out = engine.output_device
        return ForwardOut(logits=logits[:b].to(out), hidden=hidden[:b].to(out))

    def _buffers(self, cache: RowKVCache) -> tuple[list[Tensor], list[Tensor]]:
        """Every layer's buffers of ``cache``, made here if no forward made them yet."""
        engine = self.engine
        for layer in engine.layers:
            k_buf, v_buf = cache.buffers(
                layer.index, layer.nkv // layer.head_dim, layer.head_dim, engine.dtype, layer.device
            )
            if self.cuda:  # graph capture needs buffers that stay where they are
                torch._dynamo.mark_static_address(k_buf)
                torch._dynamo.mark_static_address(v_buf)
        return cache.keys, cache.values


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """One query per row (n, heads, D) over its row's slots (n, kv heads, capacity, D), written
    out so the compiler fuses it with the gather: torch's CPU SDPA kernel, built for long queries,
    cost more than the rest of a small model's step here. Scores and softmax in float32."""
    n, heads, dim = q.shape
    group = heads // k.shape[1]  # query heads per KV head
    qg = q.view(n, k.shape[1], group, dim).float()  # (n, kv heads, group, D)
    scores = torch.einsum("nhgd,nhcd->nhgc", qg, k.float()) * scale + mask.float()
    weights = torch.softmax(scores, dim=-1)
    out = torch.einsum("nhgc,nhcd->nhgd", weights, v.float())  # (n, kv heads, group, D)
    return out.to(q.dtype).view(n, heads, dim)


def _step(
    step: CompiledStep,
    ids: Tensor,
    slots: Tensor,
    positions: Tensor,
    keys: list[Tensor],
    values: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """The body over all layers, ``ids`` (n,) at ``positions`` (n,) of rows ``slots`` (n,):
    float32 logits (n, V) and final-norm hidden states (n, H). No Python here depends on the data."""
    engine = step.engine
    base = engine.base
    h = base.embed_tokens(ids)  # (n, H)
    cos, sin = base.rotary_emb(h, positions[None])  # (1, n, D)
    cos, sin = cos[0, :, None], sin[0, :, None]  # broadcast over heads
    capacity = keys[0].shape[2]
    # (n, 1, 1, capacity), additive: row i sees its slots up to its own position (its token's)
    seen = torch.arange(capacity, device=ids.device)[None, :] <= positions[:, None]
    mask = additive(seen, keys[0].dtype)[:, None, None, :]
    for layer, k_buf, v_buf in zip(step.layers, keys, values):
        q, k, v = attention_inputs(layer, h, cos, sin)  # (n, heads, D) each
        write_one(k_buf, v_buf, slots, positions, k, v)
        out = _attention(q, k_buf[slots], v_buf[slots], mask, layer.scaling)
        h = layer_output(layer, h, out.reshape(h.shape[0], -1))
    h = rms_norm(h, base.norm)
    return step.head(h)[:, : engine.vocab_size].float(), h


def compile_engine(engine: HFEngine) -> HFEngine:
    """``engine`` with its decode steps compiled where it is a ``NativeEngine``; any other engine
    is returned as it is, with one log line saying so."""
    reason = None
    if not isinstance(engine, NativeEngine):
        reason = f"the {engine.kind} engine has no static-shape step"
    elif len({layer.device for layer in engine.layers} | {engine.device}) > 1:
        reason = "its layers are placed over several devices"
    if reason:
        log.warning("compile=true: %s runs eagerly: %s", type(engine.model).__name__, reason)
        return engine
    engine.compiled = CompiledStep(engine)
    return engine
