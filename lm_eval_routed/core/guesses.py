"""Guessing ahead (``guess_ahead`` > 0, TOKEN routers, greedy rows): a routed row need not wait.

It keeps the SLM's token as a guess and goes on decoding up to ``guess_ahead`` tokens, so the SLM step
it would have sat out is not wasted; when the LLM runs, it checks every guess, the row keeps its tokens
up to the first guess the LLM disagrees with, takes the LLM's token there and drops the rest (the
router's generator is put back to where it stood at that position). The committed text is the one
the row would have written waiting, so outputs still do not depend on the schedule. Guessing pays only
when guesses are often right, so a run stops guessing while fewer than ``GUESS_BREAK_EVEN`` of the
guesses checked so far (and of the SLM tokens that waiting rows dropped) matched the LLM.
"""

from __future__ import annotations

from lm_eval_routed.core.accounting import Model
from lm_eval_routed.core.counters import RunCounters
from lm_eval_routed.core.rows import Row

# Below this share of right guesses, rolled-back SLM steps and the LLM tokens spent checking them cost
# more than the waits they save (break-even near 0.4 in a simulation on the demo pair's measured
# forward costs at batch 8; docs/performance.md).
GUESS_BREAK_EVEN = 0.4


class Guessing:
    """The decoder's guesses: when a row may guess, holding them, and settling them on the LLM's check."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # tokens a row may hold past a routed position; 0: it waits at once

    def may(self, row: Row) -> bool:
        """Whether ``row`` can guess at all."""
        # Sampled rows wait: a sampled LLM token seldom equals the SLM's, and checking would need
        # the LLM's draw taken out of order from the row's generator.
        return self.limit > 0 and not row.req.do_sample

    def pays(self, row: Row, counters: RunCounters) -> bool:
        """Whether ``row`` guesses at a routed position now: it may, and guessing has paid so far."""
        if not self.may(row):
            return False
        right, checked = counters.guesses_right, counters.guesses_checked
        return (right + 2) / (checked + 4) >= GUESS_BREAK_EVEN  # starts from a prior of 1/2

    def hold(self, row: Row, token: int, routed: bool, ends: bool) -> bool:
        """Hold ``token`` unchecked (a guess if ``routed``); whether the row now waits for the check:
        it holds ``limit`` tokens, or one that ``ends`` the text (a row only ends on checked ones)."""
        unchecked = row.unchecked
        if routed:
            unchecked.guesses.append(len(unchecked.tokens))
            unchecked.route_states.append(row.route_gen.get_state())
        unchecked.tokens.append(token)
        return (
            len(unchecked.tokens) >= self.limit
            or ends
            or row.generated + len(unchecked.tokens) >= row.req.max_new_tokens
        )

    def note_dropped(self, row: Row, token: int) -> None:
        """A row that could guess waits (or takes the LLM's token at hand) instead: keep the SLM's
        ``token`` to score it once the LLM's is known."""
        if self.may(row):
            row.unchecked.dropped = token

    def score_dropped(self, row: Row, llm_token: int, counters: RunCounters) -> None:
        """Score the SLM token ``row`` dropped at this position against the LLM's."""
        if row.unchecked.dropped is not None:
            counters.count_guess(row.unchecked.dropped == llm_token)
            row.unchecked.dropped = None

    def settle(self, row: Row, checks: list[int], counters: RunCounters) -> list[tuple[int, Model]]:
        """The tokens to commit once the LLM has checked ``row``'s guesses (``checks``: its token at
        each): the held ones up to the first guess it disagrees with, then its token there. What came
        after it is dropped and will be decoded again. Clears the row's unchecked tokens."""
        unchecked = row.unchecked
        tokens, guesses = unchecked.tokens, unchecked.guesses
        keep, fix = len(tokens), None
        for g, want, state in zip(guesses, checks, unchecked.route_states):
            row.tally.llm_scored_positions += 1
            counters.count_guess(tokens[g] == want)
            if tokens[g] != want:
                keep, fix = g, want
                row.route_gen.set_state(state)  # as it stood right after routing this position
                break
        unchecked.tokens, unchecked.guesses, unchecked.route_states = [], [], []
        routed = set(guesses)
        commits = [
            (t, Model.LLM if i in routed else Model.SLM) for i, t in enumerate(tokens[:keep])
        ]
        return commits if fix is None else [*commits, (fix, Model.LLM)]
