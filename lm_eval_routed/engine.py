"""One model behind the decoder: a forward over a subset of rows, each over its own new tokens.

This is the only place that calls a model, so a faster engine only has to provide ``Engine``'s three
methods. The Hugging Face version runs the base model and applies the LM head only where logits are
needed (the last position of each row, or every position when verifying drafts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lm_eval_routed.cache import RowKVCache


@dataclass(frozen=True)
class ForwardOut:
    """Logits and last-layer hidden states of one forward."""

    logits: (
        Tensor  # (b, V) at each row's last new token, or (b, q, V) when all positions were asked
    )
    hidden: Tensor  # (b, H) at each row's last new token


class HFEngine:
    """A Hugging Face causal LM driven through a ``RowKVCache``."""

    def __init__(self, model: torch.nn.Module, vocab_size: int) -> None:
        self.model = model
        self.base = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.vocab_size = vocab_size  # logits are cut to the vocabulary both models share
        self.pad_id = 0

    def new_cache(self, batch: int, capacity: int) -> RowKVCache:
        """An empty cache for ``batch`` slots of up to ``capacity`` tokens each."""
        return RowKVCache(batch, capacity, self.device)

    @torch.inference_mode()
    def forward(
        self,
        cache: RowKVCache,
        rows: list[int],
        lengths: list[int],
        tokens: list[list[int]],
        all_logits: bool = False,
    ) -> ForwardOut:
        """Run ``tokens[i]`` for slot ``rows[i]`` whose cache holds ``lengths[i]`` tokens."""
        counts = [len(t) for t in tokens]
        q = max(counts)
        ids = torch.tensor([t + [self.pad_id] * (q - len(t)) for t in tokens], device=self.device)
        rows_t = torch.tensor(rows, device=self.device)
        counts_t = torch.tensor(counts, device=self.device)
        positions, mask = cache.prepare(rows_t, torch.tensor(lengths, device=self.device), counts_t)
        out = self.base(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state  # (b, q, H)
        last = hidden[torch.arange(len(rows), device=self.device), counts_t - 1]  # (b, H)
        logits = self.head(hidden if all_logits else last)[..., : self.vocab_size].float()
        return ForwardOut(logits=logits, hidden=last)
