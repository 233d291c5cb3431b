"""Tokens a row holds before the LLM has checked them: speculative drafts and guesses ahead.

Speculative mode drafts ``gamma`` SLM tokens, then the LLM verifies them (``_verify``).

Guessing ahead (per-token mode, greedy rows, ``guess_ahead`` > 0): a routed row does not wait at once.
It keeps the SLM's token as a guess and goes on decoding up to ``guess_ahead`` tokens, so the SLM step
it would have sat out is not wasted; when the LLM runs, it checks every guess, the row keeps its tokens
up to the first guess the LLM disagrees with, takes the LLM's token there and drops the rest (the
router's generator is put back to where it stood at that position). The committed text is the one
the row would have written waiting, so outputs still do not depend on the schedule. Guessing pays only
when guesses are often right, so a run stops guessing while fewer than ``GUESS_BREAK_EVEN`` of the
guesses checked so far (and of the SLM tokens that waiting rows dropped) matched the LLM.
"""

from __future__ import annotations

from torch import Tensor

from lm_eval_routed.core.rows import Row
from lm_eval_routed.core.sampling import accept_drafts

# Below this share of right guesses, rolled-back SLM steps and the LLM tokens spent checking them cost
# more than the waits they save (break-even near 0.4 in a simulation on the demo pair's measured
# forward costs at batch 8; docs/performance.md).
GUESS_BREAK_EVEN = 0.4


class UncheckedTokens:
    """The decoder's handling of drafts and guesses (a mixin of ``MixedDecoder``, whose
    ``guess_ahead``, ``guess_record``, ``eos_ids`` and ``_commit`` it uses)."""

    guess_ahead: int
    guess_record: list[int]
    eos_ids: set[int]

    def _can_guess(self, row: Row) -> bool:
        # Sampled rows wait: a sampled LLM token seldom equals the SLM's, and checking would need
        # the LLM's draw taken out of order from the row's generator.
        return self.guess_ahead > 0 and not row.req.do_sample

    def _guesses(self, row: Row) -> bool:
        """Whether ``row`` guesses at a routed position now: it may, and guessing has paid so far."""
        if not self._can_guess(row):
            return False
        right, checked = self.guess_record
        return (right + 2) / (checked + 4) >= GUESS_BREAK_EVEN  # starts from a prior of 1/2

    def _score_guess(self, right: bool) -> None:
        self.guess_record[0] += right
        self.guess_record[1] += 1

    def _guess(self, row: Row, token: int, routed: bool) -> None:
        """Hold ``token`` unverified; the row waits once its guesses reach ``guess_ahead`` tokens."""
        if routed:
            row.guesses.append(len(row.drafts))
            row.route_states.append(row.route_gen.get_state())
        row.drafts.append(token)
        row.waiting = (
            len(row.drafts) >= self.guess_ahead
            or token in self.eos_ids  # a row only finishes on checked tokens
            or row.generated + len(row.drafts) >= row.req.max_new_tokens
        )

    def _verify(self, row: Row, logits: Tensor) -> None:
        """Accept the longest draft prefix the LLM agrees with, then commit one LLM token."""
        k = len(row.drafts)
        scored = logits[-(k + 1) :]  # (k + 1, V): the LLM's view of each draft slot and one more
        row.tally.llm_scored_positions += k + 1
        accepted, bonus = accept_drafts(
            row.drafts, row.draft_probs, scored, row.req, row.sample_gen
        )
        # transformers' "heuristic" schedule: draft more after a clean sweep, fewer after a miss
        row.gamma = row.gamma + 2 if accepted == k else max(1, row.gamma - 1)
        drafts, row.drafts, row.draft_probs = row.drafts, [], []
        for token in drafts[:accepted]:
            self._commit(row, token, "slm")
            if row.finish:
                break
        if not row.finish:
            self._commit(row, bonus, "llm")
        # Caches keep only what both models agree was committed; stale slots get overwritten.
        row.llm_len = min(row.llm_len, len(row.seq) - 1)
        row.slm_len = min(row.slm_len, len(row.seq) - 1)
        row.waiting = row.finish is None and self._draft_budget(row) == 0

    def _settle(self, row: Row, llm_tokens: list[int]) -> None:
        """Commit a guessing row's drafts up to the first guess the LLM disagrees with, then the
        LLM's token there; what came after it is dropped and will be decoded again."""
        drafts, guesses, states = row.drafts, row.guesses, row.route_states
        row.drafts, row.guesses, row.route_states, row.waiting = [], [], [], False
        keep, fix = len(drafts), None
        for g, want, state in zip(guesses, llm_tokens, states):
            row.tally.llm_scored_positions += 1
            self._score_guess(drafts[g] == want)
            if drafts[g] != want:
                keep, fix = g, want
                row.route_gen.set_state(state)  # as it stood right after routing this position
                break
        routed = set(guesses)
        for i, token in enumerate(drafts[:keep]):
            self._commit(row, token, "llm" if i in routed else "slm")
            if row.finish:
                return
        if fix is not None:
            self._commit(row, fix, "llm")
        # After a wrong guess both caches hold it at the last position: it gets overwritten. After
        # none, the LLM has fed the last token without keeping its logits: it is fed again when the
        # LLM next predicts this row, since the position after it may be routed.
        row.llm_len = min(row.llm_len, len(row.seq) - 1)
        row.slm_len = min(row.slm_len, len(row.seq) - 1)

    def _draft_budget(self, row: Row) -> int:
        """Drafts a row may still make: gamma, less the room the LLM's own token needs."""
        return max(0, min(row.gamma, row.left - 1))
