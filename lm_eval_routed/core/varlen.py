"""Variable-length attention for packed forwards: each row's queries over its own keys, no padding.

A packed forward (``cache.PackedPlan``) already gives the linear layers exactly the tokens there are:
the rows' new tokens side by side, padded only to ``pad_multiple`` in all, never to the longest row's
count. Attention is where padding could come back: the gathered layout (GPU) pads every row's queries
to the longest row's. Where flash-attn is installed on CUDA, ``flash_attn_varlen_func`` takes the
packed queries as they are, with each row's keys packed beside them (one gather per layer), and the
rows' boundaries as cumulative lengths; its causal mask is aligned to the end of each row's keys, so
query i of a row with ``new`` tokens over ``kv`` slots sees slots up to ``kv - new + i``, as ours does.

``kernel`` is the one place that chooses it. Its numerics are untested here (no GPU, and flash-attn
builds for CUDA only): the tests run this module's plumbing against a reference written with SDPA.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

# flash-attn's kernels take half precision only
DTYPES = (torch.float16, torch.bfloat16)


def kernel(device: torch.device, dtype: torch.dtype) -> Callable | None:
    """flash-attn's ``flash_attn_varlen_func`` where it runs (CUDA, fp16/bf16, installed), else None."""
    if device.type != "cuda" or dtype not in DTYPES:
        return None
    try:
        return importlib.import_module("flash_attn").flash_attn_varlen_func
    except (ImportError, AttributeError):
        return None


@dataclass(frozen=True)
class Varlen:
    """Index tensors of one variable-length attention call over a packed forward's rows."""

    fn: Callable  # flash_attn_varlen_func, or a stand-in with its signature (tests)
    cu_q: Tensor  # (b + 1,) int32: where each row's queries start among the packed tokens
    cu_k: Tensor  # (b + 1,) int32: where each row's keys start among the gathered keys
    kv_rows: Tensor  # (sum kv,) cache row of each gathered key
    kv_slots: Tensor  # (sum kv,) its slot within that row
    max_q: int
    max_k: int
    total_q: int  # real (unpadded) packed tokens

    def to(self, device: torch.device, non_blocking: bool = False) -> Varlen:
        """The plan with its tensors on ``device``."""

        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            cu_q=move(self.cu_q),
            cu_k=move(self.cu_k),
            kv_rows=move(self.kv_rows),
            kv_slots=move(self.kv_slots),
        )


def plan(
    fn: Callable, slots: list[int], news: list[int], kvs: list[int], device: torch.device
) -> Varlen:
    """The call for rows ``slots`` bringing ``news[i]`` tokens over ``kvs[i]`` slots each."""
    cu_q, cu_k = [0], [0]
    for new, kv in zip(news, kvs):
        cu_q.append(cu_q[-1] + new)
        cu_k.append(cu_k[-1] + kv)
    rows = [s for s, kv in zip(slots, kvs) for _ in range(kv)]
    positions = [i for kv in kvs for i in range(kv)]
    flat = torch.tensor(cu_q + cu_k + rows + positions, device=device)  # one host-to-device copy
    cu, kv_rows, kv_slots = flat.split([2 * len(cu_q), len(rows), len(positions)])
    cu = cu.to(torch.int32)  # flash-attn's type for cumulative lengths
    return Varlen(
        fn, cu[: len(cu_q)], cu[len(cu_q) :], kv_rows, kv_slots, max(news), max(kvs), cu_q[-1]
    )


def attend(query: Tensor, k_buf: Tensor, v_buf: Tensor, v: Varlen, scale: float | None) -> Tensor:
    """Packed queries (1, H, S, D) over each row's own slots in one call; returns (1, S, H, D)
    (outputs of padding tokens are zeros, never read)."""
    _, heads, width, dim = query.shape
    q = query[0, :, : v.total_q].transpose(0, 1).contiguous()  # (total_q, H, D)
    # (sum kv, H_kv, D): each row's keys after the last row's, read from its own slots
    k, vals = k_buf[v.kv_rows, :, v.kv_slots], v_buf[v.kv_rows, :, v.kv_slots]
    out = v.fn(
        q, k, vals, v.cu_q, v.cu_k, v.max_q, v.max_k, softmax_scale=scale, causal=True
    )  # (total_q, H, D)
    if width > v.total_q:
        out = torch.cat([out, out.new_zeros(width - v.total_q, heads, dim)])
    return out[None]


def reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_q: Tensor,
    cu_k: Tensor,
    max_q: int,
    max_k: int,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> Tensor:
    """``flash_attn_varlen_func``'s contract written with SDPA, row by row (tests, and any device)."""
    out = []
    for i in range(len(cu_q) - 1):
        qi = q[cu_q[i] : cu_q[i + 1]].transpose(0, 1)  # (H, new, D)
        ki, vi = (t[cu_k[i] : cu_k[i + 1]].transpose(0, 1) for t in (k, v))  # (H_kv, kv, D)
        new, kv = qi.shape[1], ki.shape[1]
        # causal, aligned to the end: query j sees keys up to kv - new + j
        cols, rows = torch.arange(kv, device=q.device), torch.arange(kv - new, kv, device=q.device)
        seen = cols[None, :] <= rows[:, None] if causal else None
        res = torch.nn.functional.scaled_dot_product_attention(
            qi, ki, vi, attn_mask=seen, scale=softmax_scale, enable_gqa=True
        )
        out.append(res.transpose(0, 1))
    return torch.cat(out)
