"""When the LLM runs over the rows waiting for it (pause-and-batch scheduling).

An LLM forward costs a fixed part (its weights are read once, its kernels launched once) plus a part
per token; every generated token passes through the LLM once whatever the schedule, so a schedule
only decides how often the fixed part is paid. Waiting for more rows pays it less often, but a
waiting row sits out SLM steps, and an SLM step over few rows still costs most of a full one.

The default rule weighs the two with the run's cost model (measured at start-up, or ``cost_slm`` /
``cost_llm``). Between two LLM forwards the decoder collects tokens: every row that takes an SLM
step (or is routed before it) adds one, committed or pending for the LLM. The LLM runs as soon as
one more SLM step over the rows still decoding would add tokens more slowly than the cycle would
yield them if the LLM ran now: the tokens collected since the last forward over their time plus the
LLM's fixed cost (each token's own LLM cost is counted on both sides, it is paid either way). That
is the marginal value theorem's rule for leaving a patch: it maximises tokens per second when the
gain of an extra step falls as rows start waiting. On the demo pair it matched the best fixed
``llm_min_batch`` at every LLM share measured (docs/performance.md), with no number to choose per
machine.

That rate is what to maximise while requests queue for the rows' slots. Once none is left, what counts
is when the last row ends. A waiting row with fewer tokens left to write than some row still decoding
delays nothing by waiting: the run ends on that other row. So at the end of a run the cost rule also
holds the LLM until the waiting row with the most tokens left (by its token budget, the one length
known before a row ends) has more left than every decoding row by as many SLM steps as one LLM
forward's fixed cost pays for: past that, its wait delays the end by more than a forward it may save.
Paused rows drift apart, and without this the run ended on a tail of forwards that served a row or
two each, where lockstep rows end together; with this rule the demo pair's runs made fewer LLM
forwards at the same speed (docs/performance.md).

A fixed ``llm_min_batch`` overrides the rule. ``schedule=lockstep`` is the schedule a comparison
runs against: the LLM runs whenever any row needs it (``llm_min_batch=1``), and no row rides along
or guesses ahead (``decode_options`` resolves that once, with what the router's kind takes). Without
usable costs (an LLM forward priced at zero), the LLM runs once half the rows in flight wait.
Whatever the rule, the LLM runs when every unfinished row waits, so the loop never deadlocks; and
no rule changes a sample's tokens, only when they are computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from lm_eval_routed.core.accounting import CostModel
from lm_eval_routed.core.rows import Row
from lm_eval_routed.routers.base import RouterKind

log = logging.getLogger(__name__)


class Schedule(Enum):
    """Which rows wait for the LLM (the ``schedule`` setting)."""

    PAUSE = "pause"  # only the rows that need it; the others decode on
    LOCKSTEP = "lockstep"  # every row, whenever one needs it (for comparison)


@dataclass(frozen=True)
class DecodeOptions:
    """The decoder's options, resolved once from the settings and the router's kind."""

    llm_min_batch: int = 0  # 0: the cost rule decides when the LLM runs
    guess_ahead: int = 0  # tokens a routed row decodes on the SLM's guess (TOKEN routers)
    riding: bool = True  # rows still decoding ride along in LLM forwards (``riding.py``)


def decode_options(
    kind: RouterKind, schedule: Schedule, llm_min_batch: int, guess_ahead: int, llm_lookahead: bool
) -> DecodeOptions:
    """What the decoder does, from settings that depend on each other: lockstep runs the LLM at
    every routed token with nothing riding or guessed; only per-token routing guesses ahead;
    speculative decoding verifies its own drafts, so nothing rides along with them."""
    if schedule is Schedule.LOCKSTEP:
        if kind is RouterKind.SPECULATIVE:
            log.info("speculative decoding ignores schedule=lockstep")
        return DecodeOptions(llm_min_batch=1, guess_ahead=0, riding=False)
    return DecodeOptions(
        llm_min_batch=llm_min_batch,
        guess_ahead=guess_ahead if kind is RouterKind.TOKEN else 0,
        riding=llm_lookahead and kind is not RouterKind.SPECULATIVE,
    )


class LLMSchedule:
    """Decides, after each SLM step, whether the LLM runs now over the waiting rows."""

    def __init__(self, costs: CostModel, min_batch: int = 0) -> None:
        self.costs = costs
        self.min_batch = min_batch  # 0: the cost rule above
        self.priced = costs.llm.fixed > 0 and costs.slm.seconds(1) > 0
        self.gain = 0  # tokens collected since the last LLM forward
        self.spent = 0.0  # their modeled seconds: SLM steps, and each token's LLM share

    @property
    def rule(self) -> str:
        """Which rule decides, for run info: ``llm_min_batch=N``, ``costs`` or ``half the rows``."""
        if self.min_batch:
            return f"llm_min_batch={self.min_batch}"
        return "costs" if self.priced else "half the rows"

    def slm_step(self, rows: int, tokens_fed: int) -> None:
        """Count an SLM step in which ``rows`` rows moved on, feeding ``tokens_fed`` tokens (0: every
        row was routed before the SLM ran, so no SLM forward is paid)."""
        self.gain += rows
        self.spent += rows * self.costs.llm.per_token
        if tokens_fed:
            self.spent += self.costs.slm.seconds(tokens_fed)

    def llm_ran(self, still_waiting: int = 0) -> None:
        """The LLM served the waiting rows: a new collection starts, holding the rows that wait
        again at once (stitch mode: the LLM keeps control) since their next token is due too."""
        self.gain, self.spent = still_waiting, still_waiting * self.costs.llm.per_token

    def due(self, waiting: int, unfinished: int, lag: int | None = None) -> bool:
        """Whether the LLM runs now, with ``waiting`` of ``unfinished`` rows waiting for it.

        ``lag`` (at the end of a run, when no request is left to admit): how many more tokens the
        waiting row furthest from its end has left to write than any row still decoding.
        """
        if waiting == 0:
            return False
        if waiting == unfinished:
            return True
        if self.min_batch:
            return waiting >= self.min_batch
        if not self.priced:
            return waiting >= (unfinished + 1) // 2
        decoding = unfinished - waiting
        step = self.costs.slm.seconds(decoding) + decoding * self.costs.llm.per_token
        if lag is not None and lag * step < self.costs.llm.fixed:
            return False  # the waiting rows are not yet what the run's end waits on
        return decoding / step < self.gain / (self.spent + self.costs.llm.fixed)


def end_lag(waiting: list[Row], unfinished: list[Row]) -> int:
    """How many more tokens the waiting row furthest from its end has left than any row still
    decoding (each row's token budget: the one length known before it ends); ``due``'s ``lag``."""
    decoding = [r.left for r in unfinished if not r.waiting]
    return max(r.left for r in waiting) - max(decoding, default=0)
