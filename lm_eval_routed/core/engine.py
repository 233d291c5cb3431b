"""One model behind the decoder: a forward over a subset of rows, each over its own new tokens.

This is the only place that calls a model. ``HFEngine.forward`` packs every row's new tokens into one
sequence (``cache.PackedPlan``), runs the model body over it, and applies the LM head only where logits
are needed (each row's last token, or every token when verifying drafts). The body is the one part an
engine replaces: here Hugging Face's own module tree, with a registered attention function that attends
over the cache's own buffers (per row on CPU, gathered into one call on GPU: ``cache.py``);
``native.NativeEngine`` writes the Llama family's forward out over the same weights.

An engine owns what it builds and changes nothing it was handed: it runs its own copy of the model's
module tree (``shared_weights_copy``: its own modules and config over the caller's weight tensors,
which it only reads), where it chooses the attention function and prepacks the linear layers. The
caller's model stays as it was loaded, for plain ``generate``, lm-eval's ``hf`` or another engine.

Token counts are padded to a multiple of ``pad_multiple`` before the matrix products: on the CPUs we
measured, torch's default fp32 GEMM is up to 2x slower at 3, 7 or 11 rows than at 4, 8 or 12
(docs/performance.md), and both it and the prepacked oneDNN kernels (``cpu_linear``) round a lone row
differently from the same row among others, so padded row counts also keep each row's result
independent of which rows share the forward.
"""

from __future__ import annotations

import copy
import inspect
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers import AttentionInterface

from lm_eval_routed.core import cpu_linear
from lm_eval_routed.core.cache import PackedPlan, RowKVCache, attend, fused_masked_gqa, round_up

if TYPE_CHECKING:  # compiled.py builds on this module
    from lm_eval_routed.core.compiled import CompiledStep

log = logging.getLogger(__name__)

ATTENTION = "lm_eval_routed_rows"
# A prepared 4D mask makes Hugging Face skip building its own; ``attend`` masks per row instead.
_PASS_THROUGH_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)


def _rows_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """HF attention interface: ``key``/``value`` are the cache's buffers, ``routed_plan`` the layout."""
    plan: PackedPlan | None = kwargs.get("routed_plan")
    if plan is None:
        raise RuntimeError(f"attention {ATTENTION!r} only runs inside HFEngine.forward")
    return attend(query, key, value, plan, scaling), None


AttentionInterface.register(ATTENTION, _rows_attention)


# Models whose sliding window was warned about: once per model, not once per engine built over it.
_WARNED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def shared_weights_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s module tree (modules, config, generation settings) that shares every
    tensor of it (parameters, buffers, tensors kept on modules): changing the copy's modules or config
    leaves ``model`` as it is, and the copy costs no tensor memory."""
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
    # accelerate's hooks (a dispatched model: placement.py) are shared, not copied: they hold the
    # offloaded weights and open files, and keep no reference to the module they run, so each tree
    # runs through them on its own modules
    hooks = [m._hf_hook for m in model.modules() if getattr(m, "_hf_hook", None) is not None]
    memo = {id(x): x for x in [*tensors, *hooks]}  # deepcopy hands these back as they are
    try:
        return copy.deepcopy(model, memo)
    except (TypeError, RuntimeError, copy.Error) as err:
        raise RuntimeError(
            f"cannot build an engine over {type(model).__name__}: its module tree does not copy "
            f"({err}); pass a model without hooks or offloading"
        ) from err


def execution_device(model: torch.nn.Module, module: torch.nn.Module) -> torch.device:
    """Where ``module`` of ``model`` computes: its weights' device, or for weights accelerate offloaded
    (left on the meta device, streamed in per forward) the device its hook, or a parent's, runs it on."""
    weight = next(module.parameters())
    if weight.device.type != "meta":
        return weight.device
    names = {m: n for n, m in model.named_modules()}
    target, found = names[module], None
    for name, m in model.named_modules():  # the innermost hooked module that holds ``module``
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
            device = getattr(h, "execution_device", None)
            inside = not name or target == name or target.startswith(name + ".")
            if device is not None and inside and (found is None or len(name) > len(found[0])):
                found = (name, device)
    if found is None:
        raise ValueError(f"{type(module).__name__} has offloaded weights but no accelerate hook")
    device = found[1]
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


@dataclass(frozen=True)
class ForwardOut:
    """Logits and last-layer hidden states of one forward, rows in the caller's order."""

    # (b, V) at each row's last new token, or (b, q, V) when more positions were asked
    logits: Tensor
    hidden: Tensor  # (b, H) at each row's last new token


class HFEngine:
    """A Hugging Face causal LM driven through a ``RowKVCache``, on its own copy of the module tree."""

    kind = "hf"  # recorded in run info

    def __init__(
        self,
        model: torch.nn.Module,
        vocab_size: int,
        pad_multiple: int = 0,
        gather: bool | None = None,
        repeat_kv: bool | None = None,
        prepack: bool = False,
        output_device: torch.device | None = None,
    ) -> None:
        self.model = shared_weights_copy(model)  # the engine's own; ``model`` is only read
        self.model.config._attn_implementation = ATTENTION  # on the copy's config alone
        # CPU: the copy's linear layers on prepacked weights (cpu_linear); offloaded ones stay
        self.prepacked = prepack and cpu_linear.prepack_linears(self.model) > 0
        self.base = self.model.get_decoder()
        self.head = self.model.get_output_embeddings()
        self.dtype = next(model.parameters()).dtype
        # token ids and the cache's plans start where the embedding runs; a model spread over
        # devices (placement.py) hands its logits to the decoder on ``output_device``
        self.device = execution_device(self.model, self.model.get_input_embeddings())
        self.output_device = output_device or self.device
        self.vocab_size = vocab_size  # logits are cut to the vocabulary both models share
        # decode steps of one token per row at static shapes (compiled.py); None: the packed path
        self.compiled: CompiledStep | None = None
        self.pad_id = 0
        # 4 rows suit CPU GEMMs (module docstring); 8 keeps GPU tensor-core shapes aligned
        self.pad_multiple = pad_multiple or (8 if self.device.type == "cuda" else 4)
        self.gather = gather  # attention path (cache.py); None: chosen by device
        config = self.base.config
        if repeat_kv is None:  # asked once here, not in every layer's attention call
            heads = config.num_attention_heads
            kv_heads = getattr(config, "num_key_value_heads", None) or heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            repeat_kv = not fused_masked_gqa(self.device, self.dtype, heads, kv_heads, head_dim)
        self.repeat_kv = repeat_kv  # repeat grouped KV heads before masked attention (cache.py)
        self.cache_kwarg = cache_kwarg(self.base)
        window = getattr(config, "sliding_window", None)
        # said once per model, not once per engine built over it (a sweep builds one per cell)
        if window and getattr(config, "use_sliding_window", True) and model not in _WARNED:
            _WARNED.add(model)
            log.warning(
                "%s uses a %d-token sliding window; routed decoding attends over the whole context, "
                "so outputs past %d tokens differ from the model's own generate",
                type(model).__name__,
                window,
                window,
            )

    def new_cache(self, batch: int, capacity: int) -> RowKVCache:
        """An empty cache for ``batch`` slots of up to ``capacity`` tokens each (more where a
        compiled step rounds it up, so that runs of similar lengths share its graphs)."""
        return RowKVCache(
            batch,
            capacity if self.compiled is None else self.compiled.room(capacity),
            self.device,
            gather=self.gather,
            dtype=self.dtype,
            repeat_kv=self.repeat_kv,
        )

    @torch.inference_mode()
    def forward(
        self,
        cache: RowKVCache,
        rows: list[int],
        lengths: list[int],
        tokens: list[list[int]],
        all_logits: bool = False,
        at: list[list[int]] | None = None,
        whole_head: bool = False,
    ) -> ForwardOut:
        """Run ``tokens[i]`` for slot ``rows[i]`` whose cache holds ``lengths[i]`` tokens.

        Logits come at each row's last new token, at every new token (``all_logits``), or at the
        new-token indices ``at[i]`` (then ``(b, max_i len(at[i]), V)``, zero-padded); over the
        vocabulary both models share, or over this model's whole head (``whole_head``: scoring).
        """
        if self.compiled is not None and self.compiled.takes(tokens, all_logits, at, whole_head):
            return self.compiled(cache, rows, lengths, [t[0] for t in tokens])
        order = sorted(range(len(rows)), key=rows.__getitem__)  # packed in slot order
        plan = cache.prepare(
            [rows[i] for i in order],
            [lengths[i] for i in order],
            [len(tokens[i]) for i in order],
            self.pad_multiple,
        )
        spans = [None] * len(rows)
        for i, span in zip(order, plan.spans):
            spans[i] = span  # back to the caller's order
        if all_logits:
            at = [list(range(s.new)) for s in spans]
        width = plan.positions.shape[1]
        packed = [t for i in order for t in tokens[i]]
        last = [s.offset + s.new - 1 for s in spans]
        picked = [] if at is None else [s.offset + j for s, js in zip(spans, at) for j in js]
        # one host-to-device copy for the token ids and the positions read back (a GPU round trip each)
        flat = torch.tensor(
            packed + [self.pad_id] * (width - len(packed)) + last + picked, device=self.device
        )
        ids, last_t, picked_t = flat.split([width, len(last), len(picked)])
        hidden = self._hidden(ids, plan, cache)
        if hidden.device != ids.device:  # the last layers ran elsewhere: index where they left it
            last_t, picked_t = last_t.to(hidden.device), picked_t.to(hidden.device)
        last_hidden = hidden[last_t]
        if at is None:
            logits = self._logits(last_hidden, whole_head)
            return ForwardOut(logits=logits, hidden=last_hidden.to(self.output_device))
        flat_logits = self._logits(hidden[picked_t], whole_head)
        logits = flat_logits.new_zeros(len(rows), max(map(len, at)), flat_logits.shape[-1])
        k = 0
        for i, js in enumerate(at):
            logits[i, : len(js)] = flat_logits[k : k + len(js)]
            k += len(js)
        return ForwardOut(logits=logits, hidden=last_hidden.to(self.output_device))

    def _hidden(self, ids: Tensor, plan: PackedPlan, cache: RowKVCache) -> Tensor:
        """The body over packed token ids (S,): final-norm hidden states (S, H)."""
        out = self.base(
            input_ids=ids[None],
            position_ids=plan.positions,
            attention_mask=_PASS_THROUGH_MASK,
            use_cache=True,
            routed_plan=plan,
            **{self.cache_kwarg: cache},
        )
        return out.last_hidden_state[0]

    def _logits(self, hidden: Tensor, whole_head: bool = False) -> Tensor:
        """LM head over (n, H) rows, padded to a GEMM-friendly row count; float32 (n, V)."""
        n = hidden.shape[0]
        pad = round_up(n, self.pad_multiple) - n
        if pad:
            hidden = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[1])])
        logits = self.head(hidden)[:n]
        logits = logits if whole_head else logits[:, : self.vocab_size]
        return logits.to(self.output_device).float()


def cache_kwarg(model: torch.nn.Module) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` (transformers >= 5.24, which
    deprecates the old name) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
