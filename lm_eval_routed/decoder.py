"""MixedDecoder: batched SLM+LLM generation where rows advance independently (pause-and-batch).

One loop serves every policy. Each iteration:
  1. the SLM steps every row that is not waiting (one packed forward; catch-up tokens included);
  2. the router marks rows whose next position goes to the LLM: they start waiting, their SLM token
     is dropped (nothing to roll back: it was never committed);
  3. once ``llm_min_batch`` rows wait, or every unfinished row does, the LLM runs one forward over the
     waiting rows, each over all the tokens it has not seen yet, and commits their tokens.
Stitch mode (R-Stitch) differs only in that a row stays waiting while the router lets the LLM keep
control; speculative mode drafts ``gamma`` SLM tokens before waiting and the LLM verifies them.
Finished rows hand their slot to the next request (continuous batching).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lm_eval_routed.accounting import CostModel, SampleRecord, SampleTally
from lm_eval_routed.engine import HFEngine
from lm_eval_routed.routers.base import Router, StepView
from lm_eval_routed.sampling import draw, filtered_probs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenRequest:
    """One sample to generate: prompt token ids plus its own generation settings."""

    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # per-sample: sampling and random routing never depend on the batch
    key: dict = field(default_factory=dict)  # accounting key (task, doc_id, repeat, prompt_hash)


@dataclass(frozen=True)
class GenResult:
    """Generated text (cut at the first stop string), its tokens, why it ended, and its accounting."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" or "length"
    record: SampleRecord


@dataclass
class Row:
    """Decoding state of one sample occupying one cache slot."""

    index: int
    req: GenRequest
    slot: int
    seq: list[int]  # prompt + committed tokens
    n_prompt: int
    sample_gen: torch.Generator
    route_gen: torch.Generator
    slm_len: int = 0  # tokens held in the SLM cache
    llm_len: int = 0  # tokens held in the LLM cache
    waiting: bool = False  # the next position (or the drafts) waits for the LLM
    gamma: int = 0  # speculative: this row's current draft length (adapts to its acceptance)
    drafts: list[int] = field(default_factory=list)  # speculative: unverified SLM tokens
    draft_probs: list[Tensor] = field(default_factory=list)
    finish: str | None = None
    tally: SampleTally = field(default_factory=SampleTally)

    def unseen(self, held: int) -> list[int]:
        """Committed tokens and drafts after the first ``held`` (what a model has not processed).

        Sliced without building ``seq + drafts``: rows run to thousands of tokens, and this is
        called for every row at every step.
        """
        if held <= len(self.seq):
            return self.seq[held:] + self.drafts
        return self.drafts[held - len(self.seq) :]

    @property
    def generated(self) -> int:
        return len(self.seq) - self.n_prompt


def _seeded(seed: int, salt: str, device: torch.device) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


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
    ) -> None:
        self.slm, self.llm, self.router = slm, llm, router
        self.tokenizer = tokenizer
        self.costs = costs
        self.params = params  # (P_slm, P_llm, P_router) charged per token
        self.eos_ids = eos_ids
        self.llm_min_batch = llm_min_batch
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
        queue = deque(enumerate(requests))
        free = list(range(slots - 1, -1, -1))
        active: list[Row] = []
        results: list[GenResult | None] = [None] * len(requests)
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
            sample_gen=_seeded(req.seed, "sample", device),
            route_gen=_seeded(req.seed, "route", "cpu"),
            gamma=self.gamma,
        )
        row.waiting = self.router.mode == "speculative" and self._draft_budget(row) == 0
        return row

    def _step(self, active: list[Row], caches: dict) -> None:
        drafting = [r for r in active if not r.waiting]
        if self.blind:
            drafting = self._pre_route(drafting)
        if drafting:
            self._slm_forward(drafting, caches["slm"])
        waiting = [r for r in active if r.waiting and not r.finish]
        if not waiting:
            return
        if self._llm_due(waiting, sum(1 for r in active if not r.finish)):
            self._llm_step(waiting, caches["llm"])

    def _llm_due(self, waiting: list[Row], unfinished: int) -> bool:
        """Whether the LLM runs now over the waiting rows (pause-and-batch scheduling).

        An LLM forward costs about the same for one row as for several (its weights are read once),
        while a waiting row sits out SLM steps. The LLM runs once ``llm_min_batch`` rows wait (by
        default half the rows in flight, so a shrinking tail does not idle), and always when every
        unfinished row waits, which is what keeps the loop from deadlocking.
        """
        min_batch = self.llm_min_batch or max(1, (unfinished + 1) // 2)
        return len(waiting) >= min_batch or len(waiting) == unfinished

    def _pre_route(self, rows: list[Row]) -> list[Row]:
        """Blind policies decide first; rows they send to the LLM skip this SLM step."""
        decided = self.router.pre_route([r.route_gen for r in rows]).tolist()
        for row, to_llm in zip(rows, decided):
            row.waiting = to_llm
            row.tally.router_calls += 1
            row.tally.modeled_latency_s += self.costs.router
        return [r for r in rows if not r.waiting]

    # -- the two models' steps -----------------------------------------------------------------

    def _slm_forward(self, rows: list[Row], cache) -> None:
        start = time.perf_counter()
        out, fed = self._forward("slm", rows, cache, all_logits=False)
        tokens, probs = self._choose(out.logits, rows)
        if self.router.mode == "speculative":
            for row, token, prob in zip(rows, tokens, probs):
                row.drafts.append(token)
                row.draft_probs.append(prob)
                row.waiting = len(row.drafts) >= self._draft_budget(row) or token in self.eos_ids
            self._charge(rows, fed, time.perf_counter() - start)
            return
        if self.blind:  # decided before this forward
            for row, token in zip(rows, tokens):
                self._commit(row, token, "slm")
            self._charge(rows, fed, time.perf_counter() - start)
            return
        gens = [r.route_gen for r in rows]
        to_llm = self.router.route(
            StepView(out.logits, out.hidden, torch.tensor(tokens), gens)
        ).tolist()
        for row, token, routed in zip(rows, tokens, to_llm):
            row.tally.router_calls += 1
            row.tally.modeled_latency_s += self.costs.router
            if routed:
                row.waiting = True
            else:
                self._commit(row, token, "slm")
        self._charge(rows, fed, time.perf_counter() - start)

    def _llm_step(self, rows: list[Row], cache) -> None:
        start = time.perf_counter()
        verify = self.router.mode == "speculative"
        out, fed = self._forward("llm", rows, cache, all_logits=verify)
        if verify:
            for i, row in enumerate(rows):
                self._verify(row, out.logits[i, : fed[i]])  # drop this row's padding
            self._charge(rows, fed, time.perf_counter() - start)
            return
        tokens, _ = self._choose(out.logits, rows)
        for row, token in zip(rows, tokens):
            row.tally.llm_scored_positions += 1
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

    def _forward(self, model: str, rows: list[Row], cache, all_logits: bool) -> tuple:
        engine = self.slm if model == "slm" else self.llm
        held = [r.slm_len if model == "slm" else r.llm_len for r in rows]
        new = [r.unseen(n) for r, n in zip(rows, held)]
        out = engine.forward(cache, [r.slot for r in rows], held, new, all_logits=all_logits)
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
        accepted, bonus = self._accept(row, scored)
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

    def _accept(self, row: Row, scored: Tensor) -> tuple[int, int]:
        if not row.req.do_sample:
            target = scored.argmax(-1).tolist()
            n = 0
            while n < len(row.drafts) and row.drafts[n] == target[n]:
                n += 1
            return n, target[n]
        # Speculative sampling (Leviathan et al. 2023): accept d with prob min(1, p(d)/q(d)),
        # else resample from norm(max(0, p - q)); the result is distributed as the LLM samples.
        p = filtered_probs(scored, row.req.temperature, row.req.top_p)
        for n, (token, q) in enumerate(zip(row.drafts, row.draft_probs)):
            u = torch.rand((), generator=row.sample_gen, device=p.device)
            if u * q[token] > p[n, token]:
                residual = (p[n] - q).clamp_min(0)
                return n, draw(residual / residual.sum(), row.sample_gen)
        return len(row.drafts), draw(p[-1], row.sample_gen)

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
