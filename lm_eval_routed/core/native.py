"""NativeEngine: the Llama family's decoder written out as one plain loop over the model's own weights.

``HFEngine`` runs Hugging Face's module tree: per layer a dozen module calls, decorators and keyword
plumbing, five separate input projections and views around each. Here each layer is the few tensor ops
it is, and every value is computed by the same operations in the same order as in Hugging Face's code,
so on the CPU the logits come out bitwise the same. The gap is widest where a forward is bound by
Python and kernel launches, as a small model's is on a GPU (docs/performance.md).

On the CPU, with ``prepack``, the projections that read one input run as one matrix product over a
packed copy of their stacked weights (q, k and v; gate and up), which the engine holds in place of the
layers' own packed copies. Elsewhere each projection reads the caller's weight in place: a stacked
copy would hold those weights (most of a model's) twice, and the caller's tensors are never replaced.

Covered: the decoders of Llama, Mistral, Qwen2 and Qwen3 (RMSNorm, rotary positions, grouped-query
attention, gated MLP, optional projection biases, Qwen3's per-head q/k norms). ``unsupported`` says why
any other model runs on ``HFEngine``; ``checked_engine`` compares the two engines on a probe before a
run trusts this one (bitwise on the CPU, to rounding elsewhere), which also catches a transformers
release that changes how one of these models computes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from lm_eval_routed.core import cpu_linear
from lm_eval_routed.core.cache import PackedPlan, RowKVCache, attend
from lm_eval_routed.core.engine import HFEngine

FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3")
# Off the CPU, other kernels may round the two engines' sequences of ops differently: the probe's
# logits then have to agree within this share of their largest magnitude.
ROUNDING_TOLERANCE = 0.05


def unsupported(model: nn.Module) -> str | None:
    """Why ``NativeEngine`` cannot run ``model`` (None when it can)."""
    base = model.get_decoder()
    if any(p.device.type == "meta" for p in model.parameters()):  # placement.py
        return "accelerate offloads some of its weights (cpu or disk) and streams them in"
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return f"{type(base).__name__} keeps no list of decoder layers under .layers"
    for layer in layers:
        if len({p.device for p in layer.parameters()}) > 1:
            return "one of its decoder layers spans several devices"
        family = type(layer).__name__.removesuffix("DecoderLayer")
        if family not in FAMILIES:
            return f"{type(layer).__name__} is not a decoder layer of {', '.join(FAMILIES)}"
        attn, mlp = layer.self_attn, layer.mlp
        expected = {
            "attention": (attn, f"{family}Attention"),
            "MLP": (mlp, f"{family}MLP"),
            "norms": (layer.input_layernorm, f"{family}RMSNorm"),
        }
        for part, (module, name) in expected.items():
            if type(module).__name__ != name:
                return f"its {part} is {type(module).__name__}, not {name}"
        for group in _stackable(layer):
            if any(type(p) not in (nn.Linear, cpu_linear.PackedLinear) for p in group):
                return "its projections are not plain linear layers (quantized?)"
            if len({p.bias is None for p in group}) > 1:
                return "some of its fused projections have biases and some do not"
    return None


def _stackable(layer: nn.Module) -> list[list[nn.Linear]]:
    """A layer's groups of linears that read one input: q/k/v, and gate/up."""
    attn, mlp = layer.self_attn, layer.mlp
    return [[attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]]


def _packs(linears: list[nn.Linear], prepacked: bool) -> bool:
    """Whether an engine that ``prepacked`` runs ``linears`` on a packed copy of their stack."""
    weight = linears[0].weight  # a placement may leave some layers on the CPU and some elsewhere
    return prepacked and weight.device.type == "cpu" and cpu_linear.supported(weight.dtype)


@dataclass(eq=False)
class _Stack:
    """What engines over one group of linear layers share: the packed copy of their stacked weights
    (None where each layer's weight is read in place) and whether a probe found the engine right."""

    stamp: tuple
    packed: Tensor | None
    checked: bool = False


# The first weight of a group -> {packed or not: a weak reference to its _Stack}. Engines hold their
# stacks; this finds a live one for the next engine over the same weights (a sweep's next cell).
_STACKS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _stamp(linears: list[nn.Linear]) -> tuple:
    return tuple((*cpu_linear.weight_stamp(m.weight), m.weight.dtype) for m in linears)


def _kept(linears: list[nn.Linear], packed: bool) -> _Stack | None:
    """The live stack of ``linears`` if their weights are as they were when it was made."""
    ref = _STACKS.get(linears[0].weight, {}).get(packed)
    stack = ref() if ref is not None else None
    return stack if stack is not None and stack.stamp == _stamp(linears) else None


class _Matmul:
    """One linear map over the layers of a group that read one input, outputs side by side."""

    @torch.no_grad()
    def __init__(self, linears: list[nn.Linear], prepacked: bool) -> None:
        packed = _packs(linears, prepacked)
        self.stack = _kept(linears, packed)
        if self.stack is None:
            stacked = None
            if packed:  # the concatenated weights are a temporary: only the packed copy stays
                stacked = cpu_linear.pack(torch.cat([m.weight for m in linears]))
            self.stack = _Stack(_stamp(linears), stacked)
            _STACKS.setdefault(linears[0].weight, {})[packed] = weakref.ref(self.stack)
        self.weights = [m.weight for m in linears]  # the caller's tensors, read in place
        self.biases = [m.bias for m in linears]
        self.bias = torch.cat(self.biases) if packed and linears[0].bias is not None else None

    def __call__(self, x: Tensor) -> Tensor:
        if self.stack.packed is not None:
            return cpu_linear.packed_linear(x, self.stack.packed, self.bias)
        return torch.cat([F.linear(x, w, b) for w, b in zip(self.weights, self.biases)], dim=-1)


class _Layer:
    """One decoder layer's weights, in the shape the loop reads them."""

    def __init__(self, layer: nn.Module, prepacked: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.index = attn.layer_idx
        self.device = attn.q_proj.weight.device  # where a placement put it (placement.py)
        self.qkv, self.gate_up = (_Matmul(group, prepacked) for group in _stackable(layer))
        self.nq, self.nkv = attn.q_proj.out_features, attn.k_proj.out_features
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.q_heads = self.nq // self.head_dim
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.o_proj = attn.o_proj
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.inter, self.act, self.down_proj = mlp.gate_proj.out_features, mlp.act_fn, mlp.down_proj


def rms_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """Hugging Face's RMSNorm, op for op: normalized in float32, scaled in the input's dtype."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary positions on (S, heads, D) with Hugging Face's half-split rotation."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def attention_inputs(layer: _Layer, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, ...]:
    """A layer's rotated queries and keys and its values over (S, H) inputs: (S, heads, D) each."""
    width, d, nq, nkv = h.shape[0], layer.head_dim, layer.nq, layer.nkv
    x = layer.qkv(rms_norm(h, layer.norm1))
    if layer.q_norm is None:  # rotate q and k as one tensor: fewer ops, the same values
        qk = rotate(x[:, : nq + nkv].view(width, -1, d), cos, sin)
        q, k = qk[:, : layer.q_heads], qk[:, layer.q_heads :]
    else:  # Qwen3 normalizes each head before the rotation
        q = rotate(rms_norm(x[:, :nq].view(width, -1, d), layer.q_norm), cos, sin)
        k = rotate(rms_norm(x[:, nq : nq + nkv].view(width, -1, d), layer.k_norm), cos, sin)
    return q, k, x[:, nq + nkv :].view(width, -1, d)


def layer_output(layer: _Layer, h: Tensor, attended: Tensor) -> Tensor:
    """The rest of a layer after attention (S, heads * D): output projection, gated MLP, residuals."""
    h = h + layer.o_proj(attended)
    gate, up = layer.gate_up(rms_norm(h, layer.norm2)).split(layer.inter, dim=-1)
    return h + layer.down_proj(layer.act(gate) * up)


class NativeEngine(HFEngine):
    """``HFEngine`` with the decoder body written out for the Llama family (module docstring)."""

    kind = "native"

    def __init__(self, model: nn.Module, vocab_size: int, **kwargs) -> None:
        reason = unsupported(model)
        if reason:
            raise ValueError(f"{type(model).__name__}: {reason}")
        super().__init__(model, vocab_size, **kwargs)
        self.layers = [_Layer(layer, self.prepacked) for layer in self.base.layers]

    def _hidden(self, ids: Tensor, plan: PackedPlan, cache: RowKVCache) -> Tensor:
        base, width = self.base, ids.shape[0]
        h = base.embed_tokens(ids)  # (S, H): the packed rows are the batch dimension here
        cos, sin = base.rotary_emb(h, plan.positions)  # (1, S, D) each
        cos, sin = cos[0, :, None], sin[0, :, None]  # broadcast over heads
        for layer in self.layers:
            if h.device != layer.device:  # the placement changes device here (placement.py)
                h = h.to(layer.device)
            if cos.device != layer.device:
                cos, sin = cos.to(layer.device), sin.to(layer.device)
            q, k, v = attention_inputs(layer, h, cos, sin)
            k_buf, v_buf = cache.write(layer.index, k, v)
            out = attend(q.transpose(0, 1)[None], k_buf, v_buf, plan, layer.scaling)
            h = layer_output(layer, h, out.reshape(width, -1))
        return rms_norm(h.to(base.norm.weight.device), base.norm)


def checked_engine(
    model: nn.Module, vocab_size: int, hf: HFEngine
) -> tuple[NativeEngine | None, str | None]:
    """A ``NativeEngine`` over ``model``, as ``hf`` is set up, that agrees with ``hf`` on a probe (two
    prompts, then a decode step): bitwise on the CPU, within ``ROUNDING_TOLERANCE`` elsewhere. Not
    probed again while another engine over the same weights holds stacks that passed. Returns
    (engine, None), or (None, why)."""
    groups = [g for layer in hf.base.layers for g in _stackable(layer)]
    probed = not all((s := _kept(g, _packs(g, hf.prepacked))) and s.checked for g in groups)
    expected = None
    if probed:
        expected = _probe(hf)
        for linear in (m for g in groups for m in g):
            # hf's packed copies of what the stacks stand in for go before the stacks are made
            cpu_linear.release(linear)
    kwargs = {
        "gather": hf.gather,
        "repeat_kv": hf.repeat_kv,
        "prepack": hf.prepacked,
        "output_device": hf.output_device,
    }
    engine = NativeEngine(model, vocab_size, **kwargs)
    if probed:
        reason = _differ(_probe(engine), expected, engine.device)
        if reason:
            return None, reason
        for layer in engine.layers:
            layer.qkv.stack.checked = layer.gate_up.stack.checked = True
    return engine, None


def _probe(engine: HFEngine) -> list[Tensor]:
    """Logits of two prompts (5 and 3 tokens), then of one decode step over both."""
    vocab = engine.vocab_size
    prompts = [[(7 * i + 3) % vocab for i in range(5)], [(11 * i + 5) % vocab for i in range(3)]]
    cache = engine.new_cache(2, 8)
    first = engine.forward(cache, [0, 1], [0, 0], prompts).logits
    return [first, engine.forward(cache, [0, 1], [5, 3], [[1], [2]]).logits]


def _differ(got: list[Tensor], want: list[Tensor], device: torch.device) -> str | None:
    if device.type == "cpu":
        worst = max((a - b).abs().max().item() for a, b in zip(got, want))
        same = all(torch.equal(a, b) for a, b in zip(got, want))
        return None if same else f"logits differ by up to {worst:.3g}"
    worst = max(
        ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item() for a, b in zip(got, want)
    )
    if worst > ROUNDING_TOLERANCE:
        return f"logits differ by up to {worst:.1%} of their largest magnitude"
    return None
