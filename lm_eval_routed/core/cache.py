"""A KV cache with one committed length per row, filled by packed forwards.

Each layer holds buffers ``(B + 1, H_kv, L, D)``; row ``r`` owns slots ``[0, length[r])`` and row ``B``
is a trash row that padding tokens write to. A forward packs the new tokens of any subset of rows into
one sequence, so a 40-token prompt and a 1-token catch-up share a forward without padding each other:
the linear layers see exactly the tokens there are. ``PackedPlan`` says where each packed token lives;
``attend`` then runs attention in one of two ways (``RowKVCache.gather``, chosen per device):
  * per row (CPU): each row attends over a view of its own slots, so no cache is copied;
  * gathered (GPU): the rows' slots are gathered and their queries padded into one batched call, so a
    forward launches a handful of kernels per layer however many rows it holds. A small model's GPU
    forward is bound by kernel launches, which a per-row loop multiplies (docs/performance.md). On
    the CPU both paths decode at the same speed, and per row copies nothing, which matters at long
    contexts.
Where a variable-length kernel runs (CUDA with flash-attn installed: ``varlen.py``), it takes the
place of both: the packed queries as they are, no row padded to the longest row's. Decode steps over
slots 0..b-1 with one token each take the cheapest way: one batched call over views. Rolling a row
back (rejected speculative drafts) is lowering its length: stale slots are overwritten before anything
reads them.

Masks are additive (0 / -inf in the model's dtype) and built once per forward: SDPA would otherwise
turn a boolean mask into one in every layer. Where torch has no fused kernel for a masked call with
grouped KV heads (CUDA's efficient kernel takes masks but not grouped heads, flash takes grouped heads
but no mask), SDPA falls back to its math kernel, a dozen launches per layer; there the KV heads are
repeated first, as Hugging Face's own SDPA path does, so the efficient kernel takes the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend

from lm_eval_routed.core import varlen


@dataclass(frozen=True)
class Span:
    """One row's part of a packed forward."""

    slot: int  # the row's cache slot
    offset: int  # where its new tokens start in the packed sequence
    new: int  # how many new tokens it brings
    kv: int  # cache slots it attends over once they are written (its length + new)


@dataclass(frozen=True)
class Gathered:
    """Index tensors of the gathered attention: rows x ``q_max`` padded queries over ``kv_max`` slots."""

    slots: Tensor | None  # (b,) cache rows to gather; None when they are 0..b-1 (a view suffices)
    q_index: Tensor  # (b * q_max,) packed position of each padded query (padding repeats the last)
    out_index: Tensor  # (S,) where each packed token's output sits among the padded queries
    # (b, 1, q_max, kv_max), additive: query i of a row sees its slots up to its own position
    mask: Tensor
    q_max: int
    kv_max: int


@dataclass(frozen=True)
class PackedPlan:
    """Index tensors of one packed forward, built once and read by every layer."""

    spans: tuple[Span, ...]  # in packed (slot) order
    positions: Tensor  # (1, S) position id of every packed token (0 for padding)
    write_rows: Tensor  # (S,) cache row each packed token writes to (the trash row for padding)
    write_slots: Tensor  # (S,) slot within that row
    # (new, kv) -> (new, kv) additive causal mask, for rows bringing several tokens
    masks: dict[tuple[int, int], Tensor]
    dense: int  # > 0: rows are slots 0..dense-1 with one token each -> one batched attention
    dense_kv: int = 0  # slots the batched attention reads (the longest row)
    # (dense, 1, 1, dense_kv), additive: hides the slots past shorter rows
    dense_mask: Tensor | None = None
    # set when the cache gathers (GPU) and the forward is not a dense decode step
    gathered: Gathered | None = None
    # set instead where a variable-length kernel runs (varlen.py) and the step is not dense
    varlen: varlen.Varlen | None = None
    repeat_kv: bool = False  # repeat grouped KV heads before masked calls (module docstring)
    # this plan's copies per device, shared by the copies (a model spread over devices: placement.py)
    copies: dict = field(default_factory=dict, repr=False, compare=False)

    def to(self, device: torch.device | str | int, non_blocking: bool = False) -> PackedPlan:
        """The plan with its index tensors on ``device``: made once per forward and device, for the
        layers that run there (accelerate's hooks call this on the arguments they move too)."""
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        here = self.positions.device
        if device.type == here.type and device.index in (None, here.index):
            return self
        if not self.copies:
            self.copies[here] = self
        if device not in self.copies:

            def move(t: Tensor | None) -> Tensor | None:
                return None if t is None else t.to(device, non_blocking=non_blocking)

            g = self.gathered
            self.copies[device] = replace(
                self,
                positions=move(self.positions),
                write_rows=move(self.write_rows),
                write_slots=move(self.write_slots),
                masks={k: move(m) for k, m in self.masks.items()},
                dense_mask=move(self.dense_mask),
                gathered=g
                and replace(
                    g,
                    slots=move(g.slots),
                    q_index=move(g.q_index),
                    out_index=move(g.out_index),
                    mask=move(g.mask),
                ),
                varlen=self.varlen and self.varlen.to(device, non_blocking),
                copies=self.copies,
            )
        return self.copies[device]


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to ``multiple`` (1 stays 1: a single row is the fastest shape there is)."""
    return n if n <= 1 else -(-n // multiple) * multiple


def additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as SDPA adds it to the scores: 0 where allowed, -inf elsewhere."""
    return torch.full(
        allowed.shape, float("-inf"), dtype=dtype, device=allowed.device
    ).masked_fill_(allowed, 0.0)


class RowKVCache:
    """Per-row-length KV cache: Hugging Face models take it as their cache, ``NativeEngine`` writes it."""

    def __init__(
        self,
        batch: int,
        capacity: int,
        device: torch.device | str,
        gather: bool | None = None,
        dtype: torch.dtype = torch.float32,
        repeat_kv: bool = False,
        varlen_fn: Callable | None | bool = True,
    ) -> None:
        self.batch = batch
        self.capacity = capacity
        self.device = torch.device(device)
        self.dtype = dtype  # the model's: masks are built in it
        self.repeat_kv = repeat_kv  # decided once per model by its engine (fused_masked_gqa)
        # gathered on GPU (fewer kernel launches), per row elsewhere (no copies): module docstring
        self.gather = self.device.type == "cuda" if gather is None else gather
        # a variable-length kernel where one runs here (varlen.kernel: the one place that
        # chooses); False: none; a function: that one (tests)
        if varlen_fn is True:
            varlen_fn = varlen.kernel(self.device, dtype)
        self.varlen_fn = varlen_fn or None
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.plan: PackedPlan | None = None

    def prepare(
        self, rows: list[int], lengths: list[int], counts: list[int], multiple: int = 1
    ) -> PackedPlan:
        """Plan a forward of ``counts[i]`` tokens for slot ``rows[i]`` holding ``lengths[i]``.

        ``rows`` must be in ascending slot order (the engine sorts them); the packed length is padded
        to ``multiple`` with tokens that write to the trash row and are never attended to.
        """
        assert rows == sorted(rows) and len(set(rows)) == len(rows), "rows: ascending, unique"
        spans, offset = [], 0
        for slot, cached, new in zip(rows, lengths, counts):
            kv = cached + new
            assert new > 0 and kv <= self.capacity, f"slot {slot}: {kv} tokens > {self.capacity}"
            spans.append(Span(slot, offset, new, kv))
            offset += new
        width = round_up(offset, multiple)
        from_zero = rows == list(range(len(rows)))  # slots 0..b-1: a view of the buffers suffices
        dense = len(rows) if from_zero and offset == len(rows) else 0
        var = self.varlen_fn is not None and not dense
        gather = self.gather and not dense and not var
        kv_max, q_max = max(s.kv for s in spans), max(s.new for s in spans)
        uneven = dense and min(s.kv for s in spans) != kv_max
        # a token's position is also its slot in its row (padding: position 0 of the trash row)
        positions = [i for s in spans for i in range(s.kv - s.new, s.kv)]
        # Every index list crosses to the device in one copy: on a GPU each copy is a round trip.
        lists = {
            "positions": positions + [0] * (width - offset),
            "write_rows": [s.slot for s in spans for _ in range(s.new)]
            + [self.batch] * (width - offset),
        }
        if uneven:
            lists["kv"] = [s.kv for s in spans]
        if gather:  # padded queries repeat their row's last one; their outputs are never read
            q_index = [s.offset + min(i, s.new - 1) for s in spans for i in range(q_max)]
            lists["q_index"] = q_index
            lists["q_position"] = [positions[j] for j in q_index]
            out_index = [k * q_max + i for k, s in enumerate(spans) for i in range(s.new)]
            lists["out_index"] = out_index + [0] * (width - offset)
            if not from_zero:
                lists["slots"] = rows
        flat = torch.tensor([i for v in lists.values() for i in v], device=self.device)
        t = dict(zip(lists, flat.split([len(v) for v in lists.values()])))
        need_masks = uneven or gather or (not var and any(s.new > 1 for s in spans))
        # CUDA's efficient kernel copies a mask whose rows are not 16-aligned, in every layer: build
        # masks over aligned rows and hand out views (columns past kv_max are masked anyway)
        align = 16 if self.device.type == "cuda" else 1
        slot_ids = torch.arange(round_up(kv_max, align), device=self.device) if need_masks else None
        dense_mask, masks, gathered = None, {}, None
        if uneven:
            seen = slot_ids[None, :] < t["kv"][:, None]
            dense_mask = additive(seen, self.dtype)[:, None, None, :kv_max]
        if gather:
            seen = slot_ids[None, :] <= t["q_position"][:, None]  # query i sees up to its position
            gathered = Gathered(
                slots=t.get("slots"),
                q_index=t["q_index"],
                out_index=t["out_index"],
                mask=additive(seen, self.dtype).view(len(spans), 1, q_max, -1)[..., :kv_max],
                q_max=q_max,
                kv_max=kv_max,
            )
        elif not var:
            for s in spans:
                if s.new > 1 and (s.new, s.kv) not in masks:
                    # query i (at position kv - new + i) sees slots 0..kv - new + i
                    cols = slot_ids[None, : round_up(s.kv, align)]
                    seen = cols <= t["positions"][s.offset : s.offset + s.new, None]
                    masks[(s.new, s.kv)] = additive(seen, self.dtype)[:, : s.kv]
        var_plan = None
        if var:
            news, kvs = [s.new for s in spans], [s.kv for s in spans]
            var_plan = varlen.plan(self.varlen_fn, rows, news, kvs, self.device)
        self.plan = PackedPlan(
            spans=tuple(spans),
            positions=t["positions"][None],
            write_rows=t["write_rows"],
            write_slots=t["positions"],
            masks=masks,
            dense=dense,
            dense_kv=kv_max,
            dense_mask=dense_mask,
            gathered=gathered,
            varlen=var_plan,
            repeat_kv=self.repeat_kv,
        )
        return self.plan

    def update(
        self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[Tensor, Tensor]:
        """Write this forward's packed keys/values (1, H, S, D) at the planned slots; return the buffers."""
        return self.write(layer_idx, key[0].transpose(0, 1), value[0].transpose(0, 1))

    def write(self, layer_idx: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Write packed keys/values (S, H, D) at the planned slots; return the layer's buffers."""
        assert self.plan is not None, "RowKVCache.prepare() must run before each forward"
        plan = self.plan.to(key.device)  # a layer's buffers live on the device it runs on
        k_buf, v_buf = self.buffers(layer_idx, key.shape[1], key.shape[2], key.dtype, key.device)
        # two advanced indices around a slice address (S, H, D): the packed dimension first
        k_buf[plan.write_rows, :, plan.write_slots] = key
        v_buf[plan.write_rows, :, plan.write_slots] = value
        return k_buf, v_buf

    def buffers(
        self, layer_idx: int, heads: int, dim: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """The layer's key/value buffers (B + 1, heads, capacity, dim), made on first use (layers
        in order): sized from the model's shapes by whichever forward reaches them first."""
        if layer_idx == len(self.keys):
            shape = (self.batch + 1, heads, self.capacity, dim)
            self.keys.append(torch.zeros(shape, dtype=dtype, device=device))
            self.values.append(torch.zeros(shape, dtype=dtype, device=device))
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Unused by our forwards (we pass positions); present for the Cache interface."""
        return 0

    @property
    def is_compileable(self) -> bool:
        return False


def write_one(
    k_buf: Tensor, v_buf: Tensor, slots: Tensor, positions: Tensor, key: Tensor, value: Tensor
) -> None:
    """Write one token per row, key/value (b, H, D), at slot ``positions[i]`` of row ``slots[i]``:
    the static-shape decode step's write (compiled.py), one index op per buffer."""
    k_buf[slots, :, positions] = key
    v_buf[slots, :, positions] = value


def attend(
    query: Tensor, k_buf: Tensor, v_buf: Tensor, plan: PackedPlan, scale: float | None
) -> Tensor:
    """Attention of packed queries (1, H, S, D) over each row's own slots; returns (1, S, H, D).

    Decode steps over slots 0..b-1 run as one batched call over views of the buffers; anything else
    runs gathered (one padded, batched call) or row by row over views of each row's slots, as the
    cache was built to (module docstring). Padding queries' outputs are never read.
    """
    _, heads, width, dim = query.shape
    plan = plan.to(query.device)
    if plan.varlen is not None:
        return varlen.attend(query, k_buf, v_buf, plan.varlen, scale)
    if plan.gathered is not None:
        return _attend_gathered(query, k_buf, v_buf, plan.gathered, scale, plan.repeat_kv)
    if plan.dense:
        b, kv = plan.dense, plan.dense_kv
        # views with as few ops as possible: on a GPU each costs host time in every layer
        q = query.transpose(0, 2)  # (S, H, 1, D): one query per row
        k, v = k_buf[:b, :, :kv], v_buf[:b, :, :kv]
        res = sdpa(q if width == b else q[:b], k, v, plan.dense_mask, scale, plan.repeat_kv)
        out = res.permute(2, 0, 1, 3)  # (1, b, H, D)
        if width > b:
            out = torch.cat([out, out.new_zeros(1, width - b, heads, dim)], dim=1)
        return out
    out = query.new_zeros(1, width, heads, dim)
    for s in plan.spans:
        rows = slice(s.slot, s.slot + 1)
        res = sdpa(
            query[:, :, s.offset : s.offset + s.new],
            k_buf[rows, :, : s.kv],
            v_buf[rows, :, : s.kv],
            plan.masks.get((s.new, s.kv)),  # None for one token: it sees every slot
            scale,
            plan.repeat_kv,
        )
        out[0, s.offset : s.offset + s.new] = res[0].transpose(0, 1)
    return out


def _attend_gathered(
    query: Tensor, k_buf: Tensor, v_buf: Tensor, g: Gathered, scale: float | None, repeat_kv: bool
) -> Tensor:
    heads, dim = query.shape[1], query.shape[3]
    b = g.mask.shape[0]
    q = query.index_select(2, g.q_index).view(heads, b, g.q_max, dim).transpose(0, 1)
    if g.slots is None:
        k, v = k_buf[:b, :, : g.kv_max], v_buf[:b, :, : g.kv_max]
    else:
        k = k_buf[:, :, : g.kv_max].index_select(0, g.slots)
        v = v_buf[:, :, : g.kv_max].index_select(0, g.slots)
    res = sdpa(q, k, v, g.mask, scale, repeat_kv)
    # (1, S, H, D): each packed token's output, read from among the padded queries
    return res.transpose(1, 2).reshape(1, b * g.q_max, heads, dim).index_select(1, g.out_index)


def sdpa(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None, repeat_kv: bool
) -> Tensor:
    """SDPA over grouped KV heads; with ``repeat_kv``, masked calls repeat the heads first."""
    if mask is not None and mask.dtype != q.dtype:  # activations not in the parameters' dtype
        mask = mask.to(q.dtype)
    if repeat_kv and mask is not None and k.shape[1] != q.shape[1]:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def fused_masked_gqa(
    device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int
) -> bool:
    """Whether torch's dispatcher has a fused kernel for masked SDPA with grouped KV heads here."""
    q = torch.zeros(1, heads, 1, head_dim, dtype=dtype, device=device)
    kv = torch.zeros(1, kv_heads, 16, head_dim, dtype=dtype, device=device)
    mask = torch.zeros(1, 1, 1, 16, dtype=dtype, device=device)
    try:  # private, but it is the dispatcher's own choice
        choice = torch._fused_sdp_choice(q, kv, kv, mask, 0.0, False, enable_gqa=True)
        return choice != SDPBackend.MATH.value
    except (AttributeError, TypeError, RuntimeError):
        return True  # unknown: leave the choice to SDPA
