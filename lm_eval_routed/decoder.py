"""MixedDecoder: batched SLM+LLM generation where rows advance independently (pause-and-batch).

One loop serves every policy. Each iteration:
  1. the SLM steps every row that is not waiting (one packed forward; catch-up tokens included);
  2. the router marks rows whose next position goes to the LLM: they start waiting, their SLM token
     is dropped (nothing to roll back: it was never committed);
  3. when the schedule says so (schedule.py: by default once another SLM step over the rows still
     decoding would gain tokens more slowly than an LLM forward now; always once every unfinished
     row waits), the LLM runs one forward over the waiting rows, each over all the tokens it has
     not seen yet, and commits them.
Stitch mode (R-Stitch) differs only in that a row stays waiting while the router lets the LLM keep
control; speculative mode drafts ``gamma`` SLM tokens before waiting and the LLM verifies them.
Finished rows hand their slot to the next request (continuous batching).

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

import logging
import time
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from lm_eval_routed.accounting import CostModel, SampleTally
from lm_eval_routed.engine import HFEngine
from lm_eval_routed.routers.base import Router, StepView
from lm_eval_routed.rows import GenRequest, GenResult, Row, seeded_generator
from lm_eval_routed.sampling import accept_drafts, draw, filtered_probs
from lm_eval_routed.schedule import LLMSchedule

log = logging.getLogger(__name__)

# Below this share of right guesses, rolled-back SLM steps and the LLM tokens spent checking them cost
# more than the waits they save (break-even near 0.4 in a simulation on the demo pair's measured
# forward costs at batch 8; docs/performance.md).
GUESS_BREAK_EVEN = 0.4

__all__ = ["GenRequest", "GenResult", "MixedDecoder"]  # requests and results live in rows.py


class MixedDecoder:
    """Token-level SLM+LLM decoding over two engines that share one vocabulary."""

    def __init__(
        self,
        slm: HFEngine,
        llm: HFEngine,
        router: Router,
        tokenizer,
        costs: CostModel,
        params: tuple[int, int, int],
        eos_ids: set[int],
        llm_min_batch: int = 0,
        guess_ahead: int = 0,
    ) -> None:
        self.slm, self.llm, self.router = slm, llm, router
        self.tokenizer = tokenizer
        self.costs = costs
        self.params = params  # (P_slm, P_llm, P_router) charged per token
        self.eos_ids = eos_ids
        self.schedule = LLMSchedule(costs, llm_min_batch)
        self.guess_ahead = guess_ahead if router.mode == "token" else 0
        self.guess_record = [0, 0]  # guesses right, guesses checked (this generate call)
        self.gamma = getattr(router, "gamma", 0)
        # Policies that never look at the SLM (constant, random) decide before it runs.
        self.blind = router.mode == "token" and router.pre_route([]) is not None
        self.trace: list[tuple[str, list[int]]] | None = (
            None  # (model, new tokens per row) per forward
        )

    # -- the loop -----------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        requests: list[GenRequest],
        batch_size: int,
        on_done: Callable[[int, GenResult], None] | None = None,
    ) -> list[GenResult]:
        """Generate every request with at most ``batch_size`` rows in flight; results keep input order."""
        if not requests:
            return []
        slots = min(batch_size, len(requests))
        capacity = max(len(r.prompt_ids) for r in requests) + max(
            r.max_new_tokens for r in requests
        )
        capacity += self.gamma + 2
        caches = {
            "slm": self.slm.new_cache(slots, capacity),
            "llm": self.llm.new_cache(slots, capacity),
        }
        self.guess_record = [0, 0]
        self.schedule.llm_ran()
        results: list[GenResult | None] = [None] * len(requests)
        for index, req in enumerate(requests):
            if req.max_new_tokens < 1:  # nothing to write: no slot, no forward
                results[index] = GenResult(
                    "", [], "length", SampleTally().record(self.params, req.key)
                )
                if on_done is not None:
                    on_done(index, results[index])
        queue = deque((i, r) for i, r in enumerate(requests) if r.max_new_tokens > 0)
        free = list(range(slots - 1, -1, -1))
        active: list[Row] = []
        while queue or active:
            while queue and free:
                active.append(self._admit(*queue.popleft(), slot=free.pop()))
            self._step(active, caches)
            for row in [r for r in active if r.finish]:
                active.remove(row)
                free.append(row.slot)
                results[row.index] = self._result(row)
                if on_done is not None:
                    on_done(row.index, results[row.index])
        return results  # type: ignore[return-value]

    def _admit(self, index: int, req: GenRequest, slot: int) -> Row:
        device = self.slm.device
        row = Row(
            index=index,
            req=req,
            slot=slot,
            seq=list(req.prompt_ids),
            n_prompt=len(req.prompt_ids),
            sample_gen=seeded_generator(req.seed, "sample", device),
            route_gen=seeded_generator(req.seed, "route", "cpu"),
            gamma=self.gamma,
        )
        row.waiting = self.router.mode == "speculative" and self._draft_budget(row) == 0
        return row

    def _step(self, active: list[Row], caches: dict) -> None:
        drafting = [r for r in active if not r.waiting]
        moving = len(drafting)  # rows routed before the SLM step move on too: to the LLM
        routed = None
        if self.blind:
            drafting, routed = self._pre_route(drafting)
        fed = self._slm_forward(drafting, caches["slm"], routed) if drafting else 0
        self.schedule.slm_step(moving, fed)
        waiting = [r for r in active if r.waiting and not r.finish]
        if self.schedule.due(len(waiting), sum(1 for r in active if not r.finish)):
            # rows still guessing ride along: the forward costs little more with them
            riders = [r for r in active if r.guesses and not r.waiting and not r.finish]
            self._llm_step(waiting + riders, caches["llm"])
            self.schedule.llm_ran(sum(1 for r in waiting if r.waiting))

    def _pre_route(self, rows: list[Row]) -> tuple[list[Row], list[bool]]:
        """Blind policies decide first; rows they send to the LLM skip this SLM step unless they
        guess ahead. Returns the rows that step and whether each one's position is routed."""
        decided = self.router.pre_route([r.route_gen for r in rows]).tolist()
        stepping, routed = [], []
        for row, to_llm in zip(rows, decided):
            row.tally.router_calls += 1
            row.tally.modeled_latency_s += self.costs.router
            if to_llm and not self._guesses(row):
                row.waiting = True
            else:
                stepping.append(row)
                routed.append(to_llm)
        return stepping, routed

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

    # -- the two models' steps -----------------------------------------------------------------

    def _slm_forward(self, rows: list[Row], cache, routed: list[bool] | None) -> int:
        """One SLM step over ``rows``; returns the tokens it fed."""
        start = time.perf_counter()
        out, fed = self._forward("slm", rows, cache)
        tokens, probs = self._choose(out.logits, rows)
        if self.router.mode == "speculative":
            for row, token, prob in zip(rows, tokens, probs):
                row.drafts.append(token)
                row.draft_probs.append(prob)
                row.waiting = len(row.drafts) >= self._draft_budget(row) or token in self.eos_ids
            self._charge(rows, fed, time.perf_counter() - start)
            return sum(fed)
        if routed is None:  # the router looks at this forward
            gens = [r.route_gen for r in rows]
            routed = self.router.route(
                StepView(out.logits, out.hidden, torch.tensor(tokens), gens)
            ).tolist()
            for row in rows:
                row.tally.router_calls += 1
                row.tally.modeled_latency_s += self.costs.router
        for row, token, to_llm in zip(rows, tokens, routed):
            if to_llm and not self._guesses(row):
                row.waiting = True
                if self._can_guess(row):
                    row.passed = token
            elif to_llm or row.drafts:
                self._guess(row, token, to_llm)
            else:
                self._commit(row, token, "slm")
        self._charge(rows, fed, time.perf_counter() - start)
        return sum(fed)

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

    def _llm_step(self, rows: list[Row], cache) -> None:
        start = time.perf_counter()
        verify = self.router.mode == "speculative"
        at = None
        if any(r.guesses for r in rows):  # logits at each guess, or at the next position
            at = [
                [len(r.seq) + g - 1 - r.llm_len for g in r.guesses] or [len(r.seq) - 1 - r.llm_len]
                for r in rows
            ]
        out, fed = self._forward("llm", rows, cache, all_logits=verify, at=at)
        if verify:
            for i, row in enumerate(rows):
                self._verify(row, out.logits[i, : fed[i]])  # drop this row's padding
            self._charge(rows, fed, time.perf_counter() - start)
            return
        logits = out.logits if at is None else out.logits[:, 0]
        tokens, _ = self._choose(logits, rows)
        for i, (row, token) in enumerate(zip(rows, tokens)):
            if row.guesses:
                self._settle(row, out.logits[i, : len(row.guesses)].argmax(-1).tolist())
                continue
            row.tally.llm_scored_positions += 1
            if row.passed is not None:
                self._score_guess(row.passed == token)
                row.passed = None
            self._commit(row, token, "llm")
            row.waiting = False
        if self.router.mode == "stitch":
            keep = self.router.keep_llm(
                StepView(out.logits, out.hidden, torch.tensor(tokens), [r.route_gen for r in rows])
            ).tolist()
            for row, stay in zip(rows, keep):
                row.tally.router_calls += 1
                row.waiting = stay and row.finish is None
        self._charge(rows, fed, time.perf_counter() - start)

    def _forward(
        self, model: str, rows: list[Row], cache, all_logits: bool = False, at=None
    ) -> tuple:
        engine = self.slm if model == "slm" else self.llm
        held = [r.slm_len if model == "slm" else r.llm_len for r in rows]
        new = [r.unseen(n) for r, n in zip(rows, held)]
        out = engine.forward(cache, [r.slot for r in rows], held, new, all_logits=all_logits, at=at)
        for row, tokens in zip(rows, new):
            if model == "slm":
                row.slm_len += len(tokens)
                row.tally.slm_forward_tokens += len(tokens)
                row.tally.slm_calls += 1
            else:
                row.llm_len += len(tokens)
                row.tally.llm_forward_tokens += len(tokens)
                row.tally.llm_calls += 1
            row.tally.modeled_latency_s += self.costs.forward_s(model, len(tokens))
        fed = [len(t) for t in new]
        if self.trace is not None:
            self.trace.append((model, fed))
        return out, fed

    # -- tokens --------------------------------------------------------------------------------

    def _choose(self, logits: Tensor, rows: list[Row]) -> tuple[list[int], list[Tensor | None]]:
        """The producing model's token per row: greedy, or sampled from the row's generator."""
        greedy = logits.argmax(-1).tolist()
        tokens, probs = [], []
        for i, row in enumerate(rows):
            if not row.req.do_sample:
                tokens.append(greedy[i])
                probs.append(None)
                continue
            p = filtered_probs(logits[i], row.req.temperature, row.req.top_p)
            tokens.append(draw(p, row.sample_gen))
            probs.append(p)
        return tokens, probs

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
        return max(0, min(row.gamma, row.req.max_new_tokens - row.generated - 1))

    def _commit(self, row: Row, token: int, producer: str) -> None:
        row.seq.append(token)
        row.tally.producers.append(producer)
        if token in self.eos_ids:
            row.finish = "eos"
        elif row.generated >= row.req.max_new_tokens:
            row.finish = "length"
        elif row.req.stop and self._hit_stop(row):
            row.finish = "stop"

    def _hit_stop(self, row: Row) -> bool:
        # A stop string can span token boundaries: look at a tail long enough to hold any of them.
        span = max(len(s) for s in row.req.stop) + 2
        tail = self.tokenizer.decode(row.seq[max(row.n_prompt, len(row.seq) - span) :])
        return any(s in tail for s in row.req.stop)

    # -- accounting ----------------------------------------------------------------------------

    def _charge(self, rows: list[Row], fed: list[int], seconds: float) -> None:
        """Split one step's wall time over its rows by the tokens each fed the model."""
        total = sum(fed)
        for row, n in zip(rows, fed):
            row.tally.latency_s += seconds * n / total

    def _result(self, row: Row) -> GenResult:
        ids = row.seq[row.n_prompt :]
        body = ids[:-1] if row.finish == "eos" else ids
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        for stop in row.req.stop:
            if stop in text:
                text = text[: text.index(stop)]
        return GenResult(
            text, ids, row.finish or "length", row.tally.record(self.params, row.req.key)
        )
