"""Speculative drafts: the SLM drafts up to ``gamma`` tokens, then the LLM verifies them at once.

The output is the LLM's own (greedy: token for token; sampling: the same distribution, by the accept
and resample rule in ``sampling.accept_drafts``). Each row adapts its draft length as transformers'
"heuristic" schedule does: two more after a clean sweep, one fewer after a miss.
"""

from __future__ import annotations

from torch import Tensor

from lm_eval_routed.core.accounting import Model
from lm_eval_routed.core.rows import Row
from lm_eval_routed.core.sampling import accept_drafts


class Drafting:
    """Drafting and verifying for a SPECULATIVE router."""

    def __init__(self, gamma: int) -> None:
        self.gamma = gamma  # each row's first draft length

    @staticmethod
    def budget(row: Row) -> int:
        """Drafts a row may still make: its draft length, less the room the LLM's own token needs."""
        return max(0, min(row.unchecked.gamma, row.left - 1))

    def add(self, row: Row, token: int, prob: Tensor | None, ends: bool) -> bool:
        """Hold the SLM's ``token`` as a draft; whether the row now waits for verification: its
        budget is drafted, or the token ``ends`` the text."""
        row.unchecked.tokens.append(token)
        row.unchecked.probs.append(prob)
        return len(row.unchecked.tokens) >= self.budget(row) or ends

    @staticmethod
    def verify(row: Row, logits: Tensor) -> list[tuple[int, Model]]:
        """The tokens to commit after the LLM scored ``row``'s drafts (``logits``: (fed, V), its view
        of every token the row fed): the longest draft prefix it accepts, then one token of its own.
        Clears the row's drafts and adapts its draft length."""
        unchecked = row.unchecked
        k = len(unchecked.tokens)
        scored = logits[-(k + 1) :]  # (k + 1, V): the LLM's view of each draft slot and one more
        row.tally.llm_scored_positions += k + 1
        accepted, bonus = accept_drafts(
            unchecked.tokens, unchecked.probs, scored, row.req, row.sample_gen
        )
        unchecked.gamma = unchecked.gamma + 2 if accepted == k else max(1, unchecked.gamma - 1)
        drafts, unchecked.tokens, unchecked.probs = unchecked.tokens, [], []
        return [(t, Model.SLM) for t in drafts[:accepted]] + [(bonus, Model.LLM)]
