"""MixedDecoder: batched SLM+LLM generation where rows advance independently (pause-and-batch).

One loop serves every policy. Each iteration:
  1. the SLM steps every row that is not waiting (one packed forward; catch-up tokens included);
  2. the router marks rows whose next position goes to the LLM: they start waiting, their SLM token
     is dropped (nothing to roll back: it was never committed);
  3. when the schedule says so (schedule.py: by default once another SLM step over the rows still
     decoding would gain tokens more slowly than an LLM forward now, and once no request is left
     to admit, not before the waiting rows are what the run's end waits on; always once every
     unfinished row waits), the LLM runs one forward over the waiting rows, each over all the
     tokens it has not seen yet, and commits them.
Rows still decoding ride along in that forward (``lookahead``): their tokens pass through the LLM
once whatever the schedule, so they add little to it, and it leaves each of them the LLM's prediction
for its next position. If the router sends that position to the LLM, the row takes the token there and
then instead of waiting; otherwise its next token makes the prediction stale. Fewer rows wait, so the
LLM runs less often for the same rows per forward. A row stops riding near its end, where the tokens it
would feed may never be needed (``_rides`` prices both sides on the cost model).
Stitch mode (R-Stitch) differs only in that a row stays waiting while the router lets the LLM keep
control; speculative mode drafts ``gamma`` SLM tokens before waiting and the LLM verifies them.
Finished rows hand their slot to the next request (continuous batching).

Guessing ahead and speculative drafts: drafts.py.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from lm_eval_routed.accounting import CostModel, ParamSizes, SampleTally
from lm_eval_routed.core.drafts import UncheckedTokens
from lm_eval_routed.core.engine import HFEngine
from lm_eval_routed.core.rows import GenRequest, GenResult, Row, seeded_generator
from lm_eval_routed.core.sampling import draw, filtered_probs
from lm_eval_routed.core.schedule import LLMSchedule
from lm_eval_routed.routers.base import Router, StepView

log = logging.getLogger(__name__)

__all__ = ["MixedDecoder"]


class MixedDecoder(UncheckedTokens):
    """Token-level SLM+LLM decoding over two engines that share one vocabulary."""

    def __init__(
        self,
        slm: HFEngine,
        llm: HFEngine,
        router: Router,
        tokenizer,
        costs: CostModel,
        params: ParamSizes,
        eos_ids: set[int],
        llm_min_batch: int = 0,
        guess_ahead: int = 0,
        lookahead: bool = True,
    ) -> None:
        self.slm, self.llm, self.router = slm, llm, router
        self.tokenizer = tokenizer
        self.costs = costs
        self.params = params  # charged per token
        self.eos_ids = eos_ids
        self.schedule = LLMSchedule(costs, llm_min_batch)
        self.guess_ahead = guess_ahead if router.mode == "token" else 0
        self.lookahead = lookahead and router.mode in ("token", "stitch")
        self._new_call()
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
        self._new_call()
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
            self._step(active, caches, closing=not queue)
            for row in [r for r in active if r.finish]:
                active.remove(row)
                free.append(row.slot)
                results[row.index] = self._result(row)
                if on_done is not None:
                    on_done(row.index, results[row.index])
        return results  # type: ignore[return-value]

    def _new_call(self) -> None:
        """Zero the counters each ``generate`` call keeps for itself."""
        self.guess_record = [0, 0]  # guesses right, guesses checked
        self.taken_ahead = 0  # LLM tokens rows took from forwards they rode along in
        self.routed = [0, 0]  # positions the router sent to the LLM, of those it decided
        self.served = [0, 0]  # waiting rows LLM forwards served, those forwards

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

    def _step(self, active: list[Row], caches: dict, closing: bool = False) -> None:
        """One SLM step over the rows not waiting, then an LLM forward if the schedule says so;
        ``closing``: no request is left to take a finished row's slot (schedule.py, the run's end)."""
        drafting = [r for r in active if not r.waiting]
        moving = len(drafting)  # rows routed before the SLM step move on too: to the LLM
        routed = None
        if self.blind:
            drafting, routed = self._pre_route(drafting)
        fed = self._slm_forward(drafting, caches["slm"], routed) if drafting else 0
        self.schedule.slm_step(moving, fed)
        waiting = [r for r in active if r.waiting and not r.finish]
        unfinished = [r for r in active if not r.finish]
        lag = self._lag(waiting, unfinished) if closing and waiting else None
        if self.schedule.due(len(waiting), len(unfinished), lag):
            self._llm_step(waiting + self._riders(active), caches["llm"])
            self.served[0] += len(waiting)
            self.served[1] += 1
            self.schedule.llm_ran(sum(1 for r in waiting if r.waiting))

    @staticmethod
    def _lag(waiting: list[Row], unfinished: list[Row]) -> int:
        """How many more tokens the waiting row furthest from its end has left than any row still
        decoding (each row's token budget: the one length known before it ends)."""
        decoding = [r.left for r in unfinished if not r.waiting]
        return max(r.left for r in waiting) - max(decoding, default=0)

    def _pre_route(self, rows: list[Row]) -> tuple[list[Row], list[bool]]:
        """Blind policies decide first; rows they send to the LLM skip this SLM step unless they
        guess ahead. Returns the rows that step and whether each one's position is routed."""
        decided = self.router.pre_route([r.route_gen for r in rows]).tolist()
        self._count_routed(decided)
        stepping, routed, ahead = [], [], []
        for row, to_llm in zip(rows, decided):
            row.tally.router_calls += 1
            row.tally.modeled_latency_s += self.costs.router
            if to_llm and self._has_ahead(row):
                ahead.append(row)  # its token is known: it skips this SLM step like a waiting row
            elif to_llm and not self._guesses(row):
                row.waiting = True
            else:
                stepping.append(row)
                routed.append(to_llm)
        self._take_ahead(ahead)
        return stepping, routed

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
            self._count_routed(routed)
            for row in rows:
                row.tally.router_calls += 1
                row.tally.modeled_latency_s += self.costs.router
        ahead = []
        for row, token, to_llm in zip(rows, tokens, routed):
            known = to_llm and self._has_ahead(row)
            if to_llm and (known or not self._guesses(row)):
                if self._can_guess(row):
                    row.passed = token  # scored against the LLM's token, taken now or after a wait
                if known:
                    ahead.append(row)
                else:
                    row.waiting = True
            elif to_llm or row.drafts:
                self._guess(row, token, to_llm)
            else:
                self._commit(row, token, "slm")
        self._take_ahead(ahead)
        self._charge(rows, fed, time.perf_counter() - start)
        return sum(fed)

    def _llm_step(self, rows: list[Row], cache) -> None:
        start = time.perf_counter()
        verify = self.router.mode == "speculative"
        at = None
        if any(r.guesses for r in rows):  # logits at each guess, or at the next position
            at = [
                [len(r.seq) + g - 1 - r.llm_len for g in r.guesses] or [len(r.seq) - 1 - r.llm_len]
                for r in rows
            ]
        riding = [not r.waiting and not r.guesses for r in rows]
        out, fed = self._forward("llm", rows, cache, all_logits=verify, at=at, riding=riding)
        if verify:
            for i, row in enumerate(rows):
                self._verify(row, out.logits[i, : fed[i]])  # drop this row's padding
            self._charge(rows, fed, time.perf_counter() - start)
            return
        logits = out.logits if at is None else out.logits[:, 0]
        served = []
        for i, (row, rides) in enumerate(zip(rows, riding)):
            if row.guesses:
                self._settle(row, out.logits[i, : len(row.guesses)].argmax(-1).tolist())
            elif rides:
                row.ahead = (len(row.seq), logits[i], out.hidden[i])
            else:
                served.append(i)
        if served:
            self._take_llm([rows[i] for i in served], logits[served], out.hidden[served])
        self._charge(rows, fed, time.perf_counter() - start)

    def _count_routed(self, decided: list[bool]) -> None:
        self.routed[0] += sum(decided)
        self.routed[1] += len(decided)

    def _riders(self, active: list[Row]) -> list[Row]:
        """Rows still decoding that ride along in the LLM forward about to run: the forward costs
        little more with them (their tokens pass through the LLM once either way), it checks the
        guesses they hold, and it predicts the next position of the others (``_rides``)."""
        return [
            r
            for r in active
            if not r.waiting
            and not r.finish
            and (r.guesses or self._rides(r))
            and len(r.seq) + len(r.drafts) > r.llm_len  # the engine needs a token to feed
        ]

    def _rides(self, row: Row) -> bool:
        """Whether a decoding row with no guesses rides, priced on the cost model.

        With chance r (the run's routed share so far) its next position is routed and the ride saves
        a wait: one row fewer for the LLM to serve, worth a forward's fixed cost over the rows a
        forward serves. Its tokens are fed now instead of at its next routed position, wasted if
        none comes before it ends: chance ``(1 - r) ** tokens_left``. On a GPU, where a token costs
        the LLM next to nothing, rows ride to their end; on a CPU they stop a few tokens earlier.
        """
        if not self.lookahead or row.llm_len == 0:
            # A row the LLM has not seen would feed its whole prompt, wasted if the row ends before
            # its first routed position; the budget cannot say how likely that is (most answers
            # end on EOS far before it), so such a row waits for its first routed position.
            return False
        share = (self.routed[0] + 1) / (self.routed[1] + 2)
        saved = share * self.costs.llm[0] * (self.served[1] + 1) / (self.served[0] + 1)
        wasted = (1 - share) ** row.left
        return saved >= wasted * (len(row.seq) - row.llm_len) * self.costs.llm[1]

    def _has_ahead(self, row: Row) -> bool:
        """Whether the LLM's prediction for ``row``'s next position is at hand (see ``_step``)."""
        return row.ahead is not None and row.ahead[0] == len(row.seq) and not row.drafts

    def _take_ahead(self, rows: list[Row]) -> None:
        """Routed rows whose next position the LLM predicted in a forward they rode along in take
        its token now instead of waiting."""
        if not rows:
            return
        logits = torch.stack([r.ahead[1] for r in rows])
        hidden = torch.stack([r.ahead[2] for r in rows])
        for row in rows:
            row.ahead = None
        self.taken_ahead += len(rows)
        self._take_llm(rows, logits, hidden)

    def _take_llm(self, rows: list[Row], logits: Tensor, hidden: Tensor) -> None:
        """Commit the LLM's token at each row's next position; in stitch mode the router then says
        whether the LLM keeps control (the row waits on)."""
        tokens, _ = self._choose(logits, rows)
        for row, token in zip(rows, tokens):
            row.tally.llm_scored_positions += 1
            if row.passed is not None:
                self._score_guess(row.passed == token)
                row.passed = None
            self._commit(row, token, "llm")
            row.waiting = False
        if self.router.mode == "stitch":
            keep = self.router.keep_llm(
                StepView(logits, hidden, torch.tensor(tokens), [r.route_gen for r in rows])
            ).tolist()
            for row, stay in zip(rows, keep):
                row.tally.router_calls += 1
                row.waiting = stay and row.finish is None

    def _forward(
        self,
        model: str,
        rows: list[Row],
        cache,
        all_logits: bool = False,
        at=None,
        riding: list[bool] | None = None,
    ) -> tuple:
        """One forward of ``model`` over every token each row's cache lacks; a riding row (called
        along in a forward run for others) is charged only its tokens' modeled cost."""
        engine = self.slm if model == "slm" else self.llm
        riding = riding or [False] * len(rows)
        held = [r.slm_len if model == "slm" else r.llm_len for r in rows]
        new = [r.unseen(n) for r, n in zip(rows, held)]
        out = engine.forward(cache, [r.slot for r in rows], held, new, all_logits=all_logits, at=at)
        for row, tokens, rides in zip(rows, new, riding):
            if model == "slm":
                row.slm_len += len(tokens)
                row.tally.slm_forward_tokens += len(tokens)
                row.tally.slm_calls += 1
            else:
                row.llm_len += len(tokens)
                row.tally.llm_forward_tokens += len(tokens)
                row.tally.llm_calls += 1
            row.tally.modeled_latency_s += (
                self.costs.llm[1] * len(tokens)
                if rides
                else self.costs.forward_s(model, len(tokens))
            )
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
