"""MixedDecoder: batched SLM+LLM generation where rows advance independently (pause-and-batch).

A step (``_step``), for every router kind:
  1. the SLM steps every row that is not waiting (one packed forward, catch-up tokens included) and
     the router decides which of their positions go to the LLM;
  2. one pure function decides each row's outcome (``outcome.py``: commit the SLM's token, wait for
     the LLM, take the LLM's token at hand, or keep the SLM's token as a guess), then it is applied;
  3. when the schedule says so (``schedule.py``), the LLM runs one forward over the waiting rows, each
     over all the tokens it has not seen yet, and commits its token for each.
A STITCH router's rows stay waiting while the router lets the LLM keep control; a SPECULATIVE router's
rows draft instead and the LLM verifies (``_draft``, ``_verify``), through the same forward and commit.
Finished rows hand their slot to the next request (continuous batching). Features that pay sit behind
their own seams: riding along in LLM forwards (``riding.py``), guessing ahead (``guesses.py``), the
schedule's cost rule and run's-end lag (``schedule.py``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from lm_eval_routed.core.accounting import CostModel, Model, ParamSizes
from lm_eval_routed.core.cache import RowKVCache
from lm_eval_routed.core.counters import RunCounters, TracedForward
from lm_eval_routed.core.drafts import Drafting
from lm_eval_routed.core.engine import ForwardOut, HFEngine
from lm_eval_routed.core.guesses import Guessing
from lm_eval_routed.core.outcome import Outcome, RowFacts, outcome
from lm_eval_routed.core.riding import Riding
from lm_eval_routed.core.rows import GenRequest, GenResult, Row, charge, empty_result
from lm_eval_routed.core.sampling import choose
from lm_eval_routed.core.schedule import DecodeOptions, LLMSchedule, end_lag
from lm_eval_routed.routers.base import Decisions, Router, RouterKind, StepView


class MixedDecoder:
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
        options: DecodeOptions,
    ) -> None:
        self.slm, self.llm, self.router = slm, llm, router
        self.tokenizer, self.costs = tokenizer, costs
        self.params = params  # charged per token
        self.eos_ids = eos_ids
        self.kind = router.kind
        self.options = options
        self.schedule = LLMSchedule(costs, options.llm_min_batch)
        token = router.kind is RouterKind.TOKEN
        assert token or not options.guess_ahead, "only per-token routing guesses (decode_options)"
        self.guessing = Guessing(options.guess_ahead)
        self.riding = Riding(options.riding, costs)
        self.drafting = Drafting(getattr(router, "gamma", 0))
        self.blind = token and router.pre_route([]) is not None  # decides without the SLM
        self.counters = RunCounters()
        self.trace: list[TracedForward] | None = None  # set to a list to record every forward
        self._caches: dict[Model, RowKVCache] = {}  # for the length of a ``generate`` call

    @torch.inference_mode()
    def generate(
        self,
        requests: list[GenRequest],
        batch_size: int,
        on_done: Callable[[int, GenResult], None] | None = None,
    ) -> list[GenResult]:
        """Generate every request with at most ``batch_size`` rows in flight; results keep input order."""
        results: list[GenResult | None] = [None] * len(requests)
        on_done = on_done or (lambda index, result: None)
        self.counters = RunCounters()
        for index, req in enumerate(requests):
            if req.max_new_tokens < 1:  # nothing to write: no slot, no forward
                results[index] = empty_result(req, self.params)
                on_done(index, results[index])
        queue = deque((i, r) for i, r in enumerate(requests) if r.max_new_tokens > 0)
        if not queue:
            return results  # type: ignore[return-value]
        slots = min(batch_size, len(requests))
        longest = max(len(r.prompt_ids) for r in requests) + max(r.max_new_tokens for r in requests)
        capacity = longest + self.drafting.gamma + 2  # drafts and the LLM's token after them
        engines = {Model.SLM: self.slm, Model.LLM: self.llm}
        self._caches = {m: e.new_cache(slots, capacity) for m, e in engines.items()}
        self.schedule.llm_ran()
        free = list(range(slots - 1, -1, -1))
        active: list[Row] = []
        try:
            while queue or active:
                while queue and free:
                    active.append(self._admit(*queue.popleft(), slot=free.pop()))
                self._step(active, closing=not queue)
                for row in [r for r in active if r.finish]:
                    active.remove(row)
                    free.append(row.slot)
                    results[row.index] = row.result(self.tokenizer, self.params)
                    on_done(row.index, results[row.index])
        finally:
            self._caches = {}  # the caches live for one call
        return results  # type: ignore[return-value]

    def _admit(self, index: int, req: GenRequest, slot: int) -> Row:
        row = Row.admit(index, req, slot, self.slm.device, gamma=self.drafting.gamma)
        row.waiting = self.kind is RouterKind.SPECULATIVE and Drafting.budget(row) == 0
        return row

    def _step(self, active: list[Row], closing: bool = False) -> None:
        """The SLM's step over the rows not waiting, then the LLM's if the schedule says so;
        ``closing``: no request is left to take a finished row's slot (the run's end, schedule.py)."""
        moving = [r for r in active if not r.waiting]
        speculative = self.kind is RouterKind.SPECULATIVE
        fed = self._draft(moving) if speculative else self._decode(moving)
        self.schedule.slm_step(len(moving), fed)  # rows routed before the SLM step moved on too
        waiting = [r for r in active if r.waiting and not r.finish]
        unfinished = [r for r in active if not r.finish]
        lag = end_lag(waiting, unfinished) if closing and waiting else None
        if not self.schedule.due(len(waiting), len(unfinished), lag):
            return
        if speculative:
            self._verify(waiting)
        else:
            self._llm_step(waiting, self.riding.riders(active, self.counters))
        self.counters.count_llm_forward(len(waiting))
        self.schedule.llm_ran(sum(1 for r in waiting if r.waiting))

    # -- the SLM's step and the outcomes --------------------------------------------------------

    def _decode(self, rows: list[Row]) -> int:
        """The SLM's step over ``rows`` and each one's outcome; returns the tokens the SLM was fed."""
        routed = None
        if self.blind:  # decided first: rows that wait or take the LLM's token skip the SLM step
            decided = self.router.pre_route([r.route_gen for r in rows])
            routed = self._route(rows, Decisions.one_call_each(decided))
            outcomes = self._outcomes(rows, routed)
            for row, result in zip(rows, outcomes):
                row.waiting = result is Outcome.WAIT
            self._take_at_hand(rows, outcomes)
            steps = [
                (r, t)
                for r, t, o in zip(rows, routed, outcomes)
                if o in (Outcome.COMMIT, Outcome.GUESS)
            ]
            rows, routed = [r for r, _ in steps], [t for _, t in steps]
        if not rows:
            return 0
        start = time.perf_counter()
        out, fed = self._forward(Model.SLM, rows)
        tokens, _ = choose(out.logits, rows)
        if routed is None:
            gens = [r.route_gen for r in rows]
            context, requests = None, []
            if self.router.reads_context:  # built only for a router that reads them: a hot path
                context = torch.tensor([len(r.seq) + len(r.unchecked.tokens) for r in rows])
                requests = [r.index for r in rows]
            view = StepView(out.logits, out.hidden, torch.tensor(tokens), gens, context, requests)
            routed = self._route(rows, self.router.route_step(view))
        outcomes = self._outcomes(rows, routed)  # blind rows' too: guessing may have stopped
        self._apply(rows, tokens, routed, outcomes)
        charge(rows, fed, time.perf_counter() - start)
        return sum(fed)

    def _route(self, rows: list[Row], decided: Decisions) -> list[bool]:
        """Count the router's decisions over ``rows`` and charge each row its calls; returns them."""
        routed = decided.chosen.tolist()
        self.counters.count_routed(routed)
        self._charge_calls(rows, decided.calls)
        return routed

    def _charge_calls(self, rows: list[Row], calls: list[int]) -> None:
        for row, n in zip(rows, calls):
            row.tally.router_calls += n
            row.tally.modeled_latency_s += n * self.costs.router

    def _outcomes(self, rows: list[Row], routed: list[bool]) -> list[Outcome]:
        """Each row's outcome, from its facts as they stand now."""
        pays = [self.guessing.pays(r, self.counters) for r in rows]
        unchecked = [bool(r.unchecked.tokens) for r in rows]
        facts = zip(routed, map(Riding.at_hand, rows), pays, unchecked)
        return [outcome(RowFacts(*f)) for f in facts]

    def _apply(
        self, rows: list[Row], tokens: list[int], routed: list[bool], outcomes: list[Outcome]
    ) -> None:
        """Apply each row's outcome to the SLM's token for it."""
        for row, token, to_llm, result in zip(rows, tokens, routed, outcomes):
            if result is Outcome.COMMIT:
                self._commit(row, token, Model.SLM)
            elif result is Outcome.GUESS:
                row.waiting = self.guessing.hold(row, token, to_llm, ends=token in self.eos_ids)
            else:  # the SLM's token is dropped; scored against the LLM's once that is known
                self.guessing.note_dropped(row, token)
                row.waiting = result is Outcome.WAIT
        self._take_at_hand(rows, outcomes)

    def _take_at_hand(self, rows: list[Row], outcomes: list[Outcome]) -> None:
        """Rows to TAKE commit the LLM's token predicted in a forward they rode along in."""
        taken = [r for r, o in zip(rows, outcomes) if o is Outcome.TAKE]
        if taken:
            self._take_llm(taken, *self.riding.take(taken, self.counters))

    # -- the LLM's step ------------------------------------------------------------------------

    def _llm_step(self, waiting: list[Row], riders: list[Row]) -> None:
        """One LLM forward: waiting rows take its token, riders its prediction, guesses its check."""
        start = time.perf_counter()
        rows = waiting + riders
        at = [r.asked() for r in rows] if any(r.unchecked.guesses for r in rows) else None
        rides = [not r.waiting and not r.unchecked.guesses for r in rows]
        out, fed = self._forward(Model.LLM, rows, at=at, riding=rides)
        logits = out.logits if at is None else out.logits[:, 0]
        served = []
        for i, (row, ride) in enumerate(zip(rows, rides)):
            if row.unchecked.guesses:
                checks = out.logits[i, : len(row.unchecked.guesses)].argmax(-1).tolist()
                self._commit_all(row, self.guessing.settle(row, checks, self.counters))
                row.waiting = False
            elif ride:
                Riding.predict(row, logits[i], out.hidden[i])
            else:
                served.append(i)
        if served:
            self._take_llm([rows[i] for i in served], logits[served], out.hidden[served])
        charge(rows, fed, time.perf_counter() - start)

    def _take_llm(self, rows: list[Row], logits: Tensor, hidden: Tensor) -> None:
        """Commit the LLM's token at each row's next position; a STITCH router then says whether
        the LLM keeps control (the row waits on)."""
        tokens, _ = choose(logits, rows)
        for row, token in zip(rows, tokens):
            row.tally.llm_scored_positions += 1
            self.guessing.score_dropped(row, token, self.counters)
            self._commit(row, token, Model.LLM)
            row.waiting = False
        if self.kind is RouterKind.STITCH:
            view = StepView(logits, hidden, torch.tensor(tokens), [r.route_gen for r in rows])
            keep = self.router.keep_step(view)
            self._charge_calls(rows, keep.calls)
            for row, stay in zip(rows, keep.chosen.tolist()):
                row.waiting = stay and row.finish is None

    # -- speculative decoding ------------------------------------------------------------------

    def _draft(self, rows: list[Row]) -> int:
        """One SLM step drafting a token for each of ``rows``; returns the tokens it was fed."""
        if not rows:
            return 0
        start = time.perf_counter()
        out, fed = self._forward(Model.SLM, rows)
        tokens, probs = choose(out.logits, rows)
        for row, token, prob in zip(rows, tokens, probs):
            row.waiting = self.drafting.add(row, token, prob, ends=token in self.eos_ids)
        charge(rows, fed, time.perf_counter() - start)
        return sum(fed)

    def _verify(self, rows: list[Row]) -> None:
        """One LLM forward over the drafting rows, scoring every draft; commits what it accepts."""
        start = time.perf_counter()
        out, fed = self._forward(Model.LLM, rows, all_logits=True)
        for i, row in enumerate(rows):
            self._commit_all(row, self.drafting.verify(row, out.logits[i, : fed[i]]))
            row.waiting = row.finish is None and self.drafting.budget(row) == 0
        charge(rows, fed, time.perf_counter() - start)

    # -- the forward and the commit ------------------------------------------------------------

    def _forward(
        self, model: Model, rows: list[Row], riding: list[bool] | None = None, **asked
    ) -> tuple[ForwardOut, list[int]]:
        """One forward of ``model`` over every token each row's cache lacks, logits where ``asked``
        (``HFEngine.forward``); a riding row (called along in a forward run for others) is charged
        only its tokens' modeled cost."""
        engine = self.slm if model is Model.SLM else self.llm
        new = [r.unseen(model) for r in rows]
        cached = [r.cached[model] for r in rows]
        slots = [r.slot for r in rows]
        out = engine.forward(self._caches[model], slots, cached, new, **asked)
        for row, tokens, before, rides in zip(rows, new, cached, riding or [False] * len(rows)):
            n = len(tokens)
            cost = self.costs.llm.per_token * n if rides else self.costs.forward_s(model, n, before)
            row.fed(model, n, cost)
        fed = [len(t) for t in new]
        if self.trace is not None:
            self.trace.append(TracedForward(model, fed))
        return out, fed

    def _commit(self, row: Row, token: int, producer: Model) -> None:
        row.seq.append(token)
        row.tally.producers.append(producer.value)
        row.finish = row.ending(self.eos_ids, self.tokenizer)

    def _commit_all(self, row: Row, tokens: list[tuple[int, Model]]) -> None:
        """Commit checked tokens in order until the row ends; rewind the caches past the last."""
        for token, producer in tokens:
            self._commit(row, token, producer)
            if row.finish:
                break
        row.rewind_caches()
