"""Choosing a token from logits: greedy, or temperature / top-p sampling from a row's own generator."""

from __future__ import annotations

import torch
from torch import Tensor


def filtered_probs(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """(..., V) probabilities after temperature and nucleus (top-p) filtering."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    # keep the smallest prefix whose mass reaches top_p (the first token always stays)
    drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def draw(probs: Tensor, generator: torch.Generator) -> int:
    """One token id from a (V,) distribution."""
    return int(torch.multinomial(probs, 1, generator=generator))
