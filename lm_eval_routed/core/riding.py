"""Riding (``llm_lookahead``): rows still decoding join an LLM forward run for the waiting rows.

Their tokens pass through the LLM once whatever the schedule, so they add little to the forward, and
it leaves each of them the LLM's prediction for its next position (a ``Prediction``). If the router
sends that position to the LLM, the row takes the token there and then instead of waiting; otherwise
its next token makes the prediction stale. Fewer rows wait, so the LLM runs less often for the same
rows per forward. A row stops riding near its end, where the tokens it would feed may never be
needed (``Riding.rides`` prices both sides on the cost model). Rows holding guesses (``guesses.py``)
ride whatever the price: the forward checks them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lm_eval_routed.core.accounting import CostModel, Model
from lm_eval_routed.core.counters import RunCounters
from lm_eval_routed.core.rows import Prediction, Row


class Riding:
    """Which decoding rows ride along in an LLM forward, and the predictions they get from it."""

    def __init__(self, enabled: bool, costs: CostModel) -> None:
        self.enabled = enabled
        self.costs = costs

    def riders(self, active: list[Row], counters: RunCounters) -> list[Row]:
        """Rows still decoding that ride along in the LLM forward about to run."""
        return [
            r
            for r in active
            if not r.waiting
            and not r.finish
            and (r.unchecked.guesses or self.rides(r, counters))
            and len(r.seq) + len(r.unchecked.tokens) > r.cached[Model.LLM]  # a token to feed
        ]

    def rides(self, row: Row, counters: RunCounters) -> bool:
        """Whether a decoding row with no guesses rides, priced on the cost model.

        With chance r (the run's routed share so far) its next position is routed and the ride saves
        a wait: one row fewer for the LLM to serve, worth a forward's fixed cost over the rows a
        forward serves. Its tokens are fed now instead of at its next routed position, wasted if
        none comes before it ends: chance ``(1 - r) ** tokens_left``. On a GPU, where a token costs
        the LLM next to nothing, rows ride to their end; on a CPU they stop a few tokens earlier.
        """
        if not self.enabled or row.cached[Model.LLM] == 0:
            # A row the LLM has not seen would feed its whole prompt, wasted if the row ends before
            # its first routed position; the budget cannot say how likely that is (most answers
            # end on EOS far before it), so such a row waits for its first routed position.
            return False
        llm = self.costs.llm
        share = (counters.routed + 1) / (counters.decided + 2)
        saved = share * llm.fixed * (counters.llm_forwards + 1) / (counters.rows_served + 1)
        wasted = (1 - share) ** row.left
        return saved >= wasted * (len(row.seq) - row.cached[Model.LLM]) * llm.per_token

    @staticmethod
    def at_hand(row: Row) -> bool:
        """Whether the LLM's prediction for ``row``'s next position is at hand."""
        p = row.prediction
        return p is not None and p.position == len(row.seq) and not row.unchecked.tokens

    @staticmethod
    def predict(row: Row, logits: Tensor, hidden: Tensor) -> None:
        """Keep the LLM's prediction for ``row``'s next position from a forward it rode along in."""
        row.prediction = Prediction(len(row.seq), logits, hidden)

    @staticmethod
    def take(rows: list[Row], counters: RunCounters) -> tuple[Tensor, Tensor]:
        """The predictions at hand for ``rows``, stacked as (b, V) logits and (b, H) hidden states;
        counted as taken."""
        counters.taken_at_hand += len(rows)
        logits = torch.stack([r.prediction.logits for r in rows])
        hidden = torch.stack([r.prediction.hidden for r in rows])
        for row in rows:
            row.prediction = None
        return logits, hidden
