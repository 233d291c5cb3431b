"""What becomes of a row's position once the router has decided it: one pure function.

After the SLM's step (or, for a router that does not look at the SLM, before it) each row's
position ends in one of four ways, decided from four facts about the row and applied by the decoder:

| routed | LLM token at hand | guessing pays | holds unchecked tokens | outcome |
|--------|-------------------|---------------|------------------------|---------|
| yes    | yes               | any           | no (1)                 | TAKE    |
| yes    | no                | yes           | any                    | GUESS   |
| yes    | no                | no            | any                    | WAIT    |
| no     | no (2)            | any           | yes                    | GUESS   |
| no     | no (2)            | any           | no                     | COMMIT  |

(1) a prediction is at hand only for a row whose tokens are all checked (``riding.at_hand``).
(2) a position the router keeps for the SLM needs no LLM token, whether one is at hand or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Outcome(Enum):
    """What the decoder does with a row's position."""

    COMMIT = "commit the SLM's token"
    WAIT = "wait for the LLM, dropping the SLM's token"
    TAKE = "take the LLM's token at hand, dropping the SLM's"
    GUESS = "keep the SLM's token unchecked and go on decoding"


@dataclass(frozen=True)
class RowFacts:
    """What a row's outcome depends on."""

    routed: bool  # the router sent this position to the LLM
    at_hand: bool  # the LLM's token for it is known already, from a forward the row rode along in
    guessing: bool  # the row may go on past a routed position on the SLM's guess (guesses.py)
    unchecked: bool  # the row holds SLM tokens the LLM has not checked yet


def outcome(facts: RowFacts) -> Outcome:
    """The outcome of one row's position (module docstring's table)."""
    if facts.routed:
        if facts.at_hand:
            return Outcome.TAKE
        return Outcome.GUESS if facts.guessing else Outcome.WAIT
    # after a guess every token stays unchecked until the LLM has checked the guess
    return Outcome.GUESS if facts.unchecked else Outcome.COMMIT
