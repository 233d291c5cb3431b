"""What one ``generate`` call counts as it runs (the features that adapt to the run read it), and
the trace of its forwards that tests and benchmarks ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from lm_eval_routed.core.accounting import Model


class TracedForward(NamedTuple):
    """One forward of a run (``MixedDecoder.trace``): which model, and the tokens each row fed."""

    model: Model
    fed: list[int]


@dataclass
class RunCounters:
    """Counters of one ``generate`` call.

    Riding (``riding.py``) prices a ride on the routed share and on how many rows an LLM forward
    serves; guessing ahead (``guesses.py``) stops while too few guesses are right; benchmarks read
    how many LLM tokens rows took at hand.
    """

    routed: int = 0  # positions the router sent to the LLM
    decided: int = 0  # positions the router decided
    rows_served: int = 0  # waiting rows the LLM's forwards served
    llm_forwards: int = 0  # those forwards
    guesses_right: int = 0  # guesses (and dropped SLM tokens) the LLM agreed with
    guesses_checked: int = 0  # of those the LLM checked
    taken_at_hand: int = 0  # LLM tokens rows took from forwards they rode along in

    def count_routed(self, decided: list[bool]) -> None:
        """Count one router call's decisions."""
        self.routed += sum(decided)
        self.decided += len(decided)

    def count_llm_forward(self, waiting: int) -> None:
        """Count one LLM forward run for ``waiting`` waiting rows."""
        self.rows_served += waiting
        self.llm_forwards += 1

    def count_guess(self, right: bool) -> None:
        """Count one guess the LLM checked."""
        self.guesses_right += right
        self.guesses_checked += 1
