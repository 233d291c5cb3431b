"""A KV cache with one committed length per row, filled by packed forwards.

Each layer holds buffers ``(B + 1, H_kv, L, D)``; row ``r`` owns slots ``[0, length[r])`` and row ``B``
is a trash row that padding tokens write to. A forward packs the new tokens of any subset of rows into
one sequence, so a 40-token prompt and a 1-token catch-up share a forward without padding each other:
the linear layers see exactly the tokens there are. ``PackedPlan`` says where each packed token lives;
``attend`` then runs attention per row over a view of that row's own slots, so no cache is gathered or
copied. Rolling a row back (rejected speculative drafts) is lowering its length: stale slots are
overwritten before anything reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Span:
    """One row's part of a packed forward."""

    slot: int  # the row's cache slot
    offset: int  # where its new tokens start in the packed sequence
    new: int  # how many new tokens it brings
    kv: int  # cache slots it attends over once they are written (its length + new)


@dataclass(frozen=True)
class PackedPlan:
    """Index tensors of one packed forward, built once and read by every layer."""

    spans: tuple[Span, ...]  # in packed (slot) order
    positions: Tensor  # (1, S) position id of every packed token (0 for padding)
    write_rows: Tensor  # (S,) cache row each packed token writes to (the trash row for padding)
    write_slots: Tensor  # (S,) slot within that row
    masks: dict[tuple[int, int], Tensor]  # (new, kv) -> (new, kv) causal mask for multi-token rows
    dense: int  # > 0: rows are slots 0..dense-1 with one token each -> one batched attention
    dense_kv: int = 0  # slots the batched attention reads (the longest row)
    dense_mask: Tensor | None = None  # (dense, 1, 1, dense_kv) hides slots past shorter rows


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to ``multiple`` (1 stays 1: a single row is the fastest shape there is)."""
    return n if n <= 1 else -(-n // multiple) * multiple


class RowKVCache:
    """Per-row-length KV cache passed to Hugging Face models as ``past_key_values``."""

    def __init__(self, batch: int, capacity: int, device: torch.device | str) -> None:
        self.batch = batch
        self.capacity = capacity
        self.device = torch.device(device)
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
        spans, positions, write_rows, write_slots, masks = [], [], [], [], {}
        offset = 0
        for slot, held, new in zip(rows, lengths, counts):
            kv = held + new
            assert new > 0 and kv <= self.capacity, f"slot {slot}: {kv} tokens > {self.capacity}"
            spans.append(Span(slot, offset, new, kv))
            positions += range(held, kv)
            write_rows += [slot] * new
            write_slots += range(held, kv)
            if new > 1 and (new, kv) not in masks:
                # query i (at position held + i) sees slots 0..held + i
                masks[(new, kv)] = (
                    torch.arange(kv, device=self.device)[None, :]
                    <= torch.arange(held, kv, device=self.device)[:, None]
                )
            offset += new
        pad = round_up(offset, multiple) - offset
        dense = len(rows) if rows == list(range(len(rows))) and offset == len(rows) else 0
        dense_kv = max(s.kv for s in spans)
        dense_mask = None
        if dense and min(s.kv for s in spans) != dense_kv:
            kv_t = torch.tensor([s.kv for s in spans], device=self.device)
            dense_mask = (torch.arange(dense_kv, device=self.device)[None, :] < kv_t[:, None])[
                :, None, None
            ]
        self.plan = PackedPlan(
            spans=tuple(spans),
            positions=torch.tensor([positions + [0] * pad], device=self.device),
            write_rows=torch.tensor(write_rows + [self.batch] * pad, device=self.device),
            write_slots=torch.tensor(write_slots + [0] * pad, device=self.device),
            masks=masks,
            dense=dense,
            dense_kv=dense_kv,
            dense_mask=dense_mask,
        )
        return self.plan

    def update(
        self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[Tensor, Tensor]:
        """Write this forward's packed keys/values (1, H, S, D) at the planned slots; return the buffers."""
        plan = self.plan
        assert plan is not None, "RowKVCache.prepare() must run before each forward"
        if layer_idx == len(self.keys):  # first forward: size the buffers from the model's shapes
            shape = (self.batch + 1, key.shape[1], self.capacity, key.shape[3])
            self.keys.append(torch.zeros(shape, dtype=key.dtype, device=key.device))
            self.values.append(torch.zeros(shape, dtype=value.dtype, device=value.device))
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        # two advanced indices around a slice put the packed dimension first: (S, H, D)
        k_buf[plan.write_rows, :, plan.write_slots] = key[0].transpose(0, 1)
        v_buf[plan.write_rows, :, plan.write_slots] = value[0].transpose(0, 1)
        return k_buf, v_buf

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Unused by our forwards (we pass positions); present for the Cache interface."""
        return 0

    @property
    def is_compileable(self) -> bool:
        return False


def attend(
    query: Tensor, k_buf: Tensor, v_buf: Tensor, plan: PackedPlan, scale: float | None
) -> Tensor:
    """Attention of packed queries (1, H, S, D) over each row's own slots; returns (1, S, H, D).

    Decode steps over slots 0..b-1 run as one batched call over views of the buffers; anything else
    runs row by row, each over a view of its slots, so ragged forwards never pad or copy the cache.
    Padding queries attend to nothing and come out as zeros.
    """
    _, heads, width, dim = query.shape
    if plan.dense:
        b, kv = plan.dense, plan.dense_kv
        res = F.scaled_dot_product_attention(
            query[0, :, :b].transpose(0, 1).unsqueeze(2),  # (b, H, 1, D): one query per row
            k_buf[:b, :, :kv],
            v_buf[:b, :, :kv],
            attn_mask=plan.dense_mask,
            scale=scale,
            enable_gqa=True,
        )
        out = res.squeeze(2).unsqueeze(0)  # (1, b, H, D)
        if width > b:
            out = torch.cat([out, out.new_zeros(1, width - b, heads, dim)], dim=1)
        return out
    out = query.new_zeros(1, width, heads, dim)
    for s in plan.spans:
        rows = slice(s.slot, s.slot + 1)
        res = F.scaled_dot_product_attention(
            query[:, :, s.offset : s.offset + s.new],
            k_buf[rows, :, : s.kv],
            v_buf[rows, :, : s.kv],
            attn_mask=plan.masks.get((s.new, s.kv)),  # None for one token: it sees every slot
            scale=scale,
            enable_gqa=True,
        )
        out[0, s.offset : s.offset + s.new] = res[0].transpose(0, 1)
    return out
