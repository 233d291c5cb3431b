"""A KV cache with one committed length per row, in the spirit of gpt-fast's buffer-plus-position cache.

Each layer holds buffers ``(B, H_kv, L + 1, D)``; row ``r`` owns slots ``[0, length[r])``. A forward over
any subset of rows, each with its own number of new tokens, writes those tokens at each row's next slots
and attends through a 4D mask, so rows advance independently and a row's state never moves. Rolling a
row back (rejected speculative drafts) is just lowering its length: stale slots are masked and later
overwritten. Slot ``L`` is a trash slot that padded query positions write to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ForwardPlan:
    """Index tensors of one forward, built once and read by every layer."""

    rows: Tensor  # (b,) slots of the rows in this forward
    write_slots: Tensor  # (b, q) cache slot each input position writes to (trash slot for padding)
    kv_len: int  # slots every row attends over (max of the rows' new lengths)
    full: bool  # rows == all slots in order: read the buffers as views, no gather


class RowKVCache:
    """Per-row-length KV cache passed to Hugging Face models as ``past_key_values``."""

    def __init__(self, batch: int, capacity: int, device: torch.device | str) -> None:
        self.batch = batch
        self.capacity = capacity
        self.device = torch.device(device)
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.plan: ForwardPlan | None = None

    def prepare(self, rows: Tensor, lengths: Tensor, new_counts: Tensor) -> tuple[Tensor, Tensor]:
        """Plan a forward of ``new_counts[i]`` tokens for slot ``rows[i]`` holding ``lengths[i]``.

        Returns the ``(b, q)`` position ids and the ``(b, 1, q, kv_len)`` boolean attention mask.
        """
        q = int(new_counts.max())
        offsets = torch.arange(q, device=self.device)
        positions = lengths[:, None] + offsets[None, :]  # (b, q)
        valid = offsets[None, :] < new_counts[:, None]
        kv_len = int((lengths + new_counts).max())
        assert kv_len <= self.capacity, f"cache overflow: {kv_len} > {self.capacity}"
        write_slots = torch.where(valid, positions, torch.full_like(positions, self.capacity))
        slots = torch.arange(kv_len, device=self.device)
        mask = slots[None, None, :] <= positions[:, :, None]  # (b, q, kv_len): causal per row
        full = rows.numel() == self.batch and bool((rows == torch.arange(self.batch)).all())
        self.plan = ForwardPlan(rows=rows, write_slots=write_slots, kv_len=kv_len, full=full)
        return positions, mask[:, None]

    def update(
        self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[Tensor, Tensor]:
        """Write this forward's keys/values (b, H, q, D) at the planned slots; return what rows attend to."""
        plan = self.plan
        assert plan is not None, "RowKVCache.prepare() must run before each forward"
        if layer_idx == len(
            self.keys
        ):  # first forward: size the buffers from the model's own shapes
            shape = (self.batch, key.shape[1], self.capacity + 1, key.shape[3])
            self.keys.append(torch.zeros(shape, dtype=key.dtype, device=key.device))
            self.values.append(torch.zeros(shape, dtype=value.dtype, device=value.device))
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        rows = plan.rows[:, None]
        # advanced indices around a slice put (b, q) first: (b, q, H, D)
        k_buf[rows, :, plan.write_slots] = key.transpose(1, 2)
        v_buf[rows, :, plan.write_slots] = value.transpose(1, 2)
        if plan.full:
            return k_buf[:, :, : plan.kv_len], v_buf[:, :, : plan.kv_len]
        return k_buf[plan.rows, :, : plan.kv_len], v_buf[plan.rows, :, : plan.kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Unused by our forwards (we pass positions); present for the Cache interface."""
        return 0

    @property
    def is_compileable(self) -> bool:
        return False
