"""NativeEngine: the Llama family's decoder written out as one plain loop over the model's own weights.

``HFEngine`` runs Hugging Face's module tree: per layer a dozen module calls, decorators and keyword
plumbing, five separate input projections and views around each. Measured on the demo pair (CPU, fp32,
2 cores, a decode step over 8 rows): 51 ms for the LLM's step there, 42 ms here; 12.1 ms and 10.5 ms
for the SLM's. Where a forward is bound by Python and kernel launches, as a small model's is on a GPU,
the gap is wider: 19 ms against 12 ms on a launch-bound stand-in for the demo LLM
(``scripts/build_proxy_pair.py``). Here each layer is the few tensor ops it is, the projections that
read one input run as one matrix product (q, k and v; gate and up), and every value is computed by the
same operations in the same order as in Hugging Face's code, so on the CPU the logits come out bitwise
the same (docs/performance.md).

Covered: the decoders of Llama, Mistral, Qwen2 and Qwen3 (RMSNorm, rotary positions, grouped-query
attention, gated MLP, optional projection biases, Qwen3's per-head q/k norms). ``unsupported`` says why
any other model runs on ``HFEngine``; ``disagreement`` compares the two engines on a probe before a run
trusts this one (bitwise on the CPU, to rounding elsewhere), which also catches a transformers release
that changes how one of these models computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_eval_routed import cpu_linear
from lm_eval_routed.cache import PackedPlan, RowKVCache, attend
from lm_eval_routed.engine import HFEngine

FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3")
# Off the CPU, fused and separate matrix products may round differently (other kernels): the probe's
# logits then have to agree within this share of their largest magnitude.
ROUNDING_TOLERANCE = 0.05


def unsupported(model: nn.Module) -> str | None:
    """Why ``NativeEngine`` cannot run ``model`` (None when it can)."""
    base = model.get_decoder()
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        return "its modules carry accelerate hooks (device_map offloading)"
    if len({p.device for p in model.parameters()}) > 1:
        return "its weights span several devices"
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return f"{type(base).__name__} keeps no list of decoder layers under .layers"
    for layer in layers:
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
        projections = [attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj]
        if any(type(p) not in (nn.Linear, cpu_linear.PackedLinear) for p in projections):
            return "its projections are not plain linear layers (quantized?)"
        for group in ([attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]):
            if len({p.bias is None for p in group}) > 1:
                return "some of its fused projections have biases and some do not"
    return None


class _Matmul:
    """One linear map over the weights of several linear layers of one input, stacked."""

    # plain tensors even when built under inference_mode: the model's weights may become views of them
    @torch.inference_mode(False)
    @torch.no_grad()
    def __init__(self, linears: list[nn.Linear]) -> None:
        first = linears[0]
        self.bias = None if first.bias is None else torch.cat([m.bias for m in linears])
        stacked = torch.cat([m.weight for m in linears])
        if isinstance(first, cpu_linear.PackedLinear) and cpu_linear.supported(first.weight.dtype):
            # prepacked layers: one oneDNN copy of the stacked weight, beside each layer's own
            self.weight, self.packed = None, cpu_linear.pack(stacked)
        else:  # the layers' weights become views of the stacked one, so none is held twice
            self.weight, self.packed = stacked, None
            start = 0
            for m in linears:
                m.weight.data = stacked[start : start + m.out_features]
                start += m.out_features
        self.stamp = _stamp(linears)  # the layers as they were when stacked

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            return cpu_linear.packed_linear(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)


def _stamp(linears: list[nn.Linear]) -> list:
    return [(type(m), cpu_linear.weight_stamp(m.weight)) for m in linears]


def _stacked(linears: list[nn.Linear], owner: nn.Module, name: str) -> _Matmul:
    """The stacked map of ``linears``, kept on ``owner`` so that the next engine over the same model
    (a sweep's next cell) reuses it while the layers' weights and kinds are as they were."""
    kept = owner.__dict__.get(name)
    if kept is None or kept.stamp != _stamp(linears):
        kept = owner.__dict__[name] = _Matmul(linears)
    return kept


class _Layer:
    """One decoder layer's weights, in the shape the loop reads them."""

    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.index = attn.layer_idx
        self.qkv = _stacked([attn.q_proj, attn.k_proj, attn.v_proj], attn, "_routed_qkv")
        nq, nkv = attn.q_proj.out_features, attn.k_proj.out_features
        self.split = (nq, nkv, nkv)
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.o_proj = attn.o_proj
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.gate_up = _stacked([mlp.gate_proj, mlp.up_proj], mlp, "_routed_gate_up")
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


class NativeEngine(HFEngine):
    """``HFEngine`` with the decoder body written out for the Llama family (module docstring)."""

    kind = "native"

    def __init__(self, model: nn.Module, vocab_size: int, **kwargs) -> None:
        reason = unsupported(model)
        if reason:
            raise ValueError(f"{type(model).__name__}: {reason}")
        super().__init__(model, vocab_size, **kwargs)
        self.layers = [_Layer(layer) for layer in self.base.layers]

    def _hidden(self, ids: Tensor, plan: PackedPlan, cache: RowKVCache) -> Tensor:
        base, width = self.base, ids.shape[0]
        h = base.embed_tokens(ids)  # (S, H): the packed rows are the batch dimension here
        cos, sin = base.rotary_emb(h, plan.positions)  # (1, S, D) each
        cos, sin = cos[0, :, None], sin[0, :, None]  # broadcast over heads
        for layer in self.layers:
            d = layer.head_dim
            nq, nkv, _ = layer.split
            x = layer.qkv(rms_norm(h, layer.norm1))
            if layer.q_norm is None:  # rotate q and k as one tensor: fewer ops, the same values
                qk = rotate(x[:, : nq + nkv].view(width, -1, d), cos, sin)
                q, k = qk[:, : nq // d], qk[:, nq // d :]
            else:  # Qwen3 normalizes each head before the rotation
                q = rotate(rms_norm(x[:, :nq].view(width, -1, d), layer.q_norm), cos, sin)
                k = rotate(rms_norm(x[:, nq : nq + nkv].view(width, -1, d), layer.k_norm), cos, sin)
            v = x[:, nq + nkv :].view(width, -1, d)
            k_buf, v_buf = cache.write(layer.index, k, v)
            out = attend(q.transpose(0, 1)[None], k_buf, v_buf, plan, layer.scaling)
            h = h + layer.o_proj(out.reshape(width, -1))
            gate, up = layer.gate_up(rms_norm(h, layer.norm2)).split(layer.inter, dim=-1)
            h = h + layer.down_proj(layer.act(gate) * up)
        return rms_norm(h, base.norm)


def disagreement(native: HFEngine, hf: HFEngine) -> str | None:
    """Run both engines over a probe (two prompts, then a decode step); None if their logits agree
    (bitwise on the CPU, within ``ROUNDING_TOLERANCE`` elsewhere), else how far apart they were."""
    vocab = native.vocab_size
    prompts = [[(7 * i + 3) % vocab for i in range(5)], [(11 * i + 5) % vocab for i in range(3)]]
    caches = [engine.new_cache(2, 8) for engine in (native, hf)]
    worst = 0.0
    for step in ([0, 0], [5, 3]):
        tokens = prompts if step == [0, 0] else [[1], [2]]
        a = native.forward(caches[0], [0, 1], step, tokens).logits
        b = hf.forward(caches[1], [0, 1], step, tokens).logits
        if native.device.type == "cpu":
            if not torch.equal(a, b):
                return f"logits differ by up to {(a - b).abs().max().item():.3g}"
            continue
        worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item())
    if worst > ROUNDING_TOLERANCE:
        return f"logits differ by up to {worst:.1%} of their largest magnitude"
    return None
