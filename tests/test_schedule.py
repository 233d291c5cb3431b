"""When the LLM runs: the cost rule, a fixed llm_min_batch, and the fallback without costs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_decoder_fidelity import requests

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.accounting import CostModel
from lm_eval_routed.core.schedule import LLMSchedule, end_lag
from lm_eval_routed.loading.runtime import with_costs


def fires_at(schedule: LLMSchedule, rows: int = 8) -> int:
    """The fewest waiting rows (of ``rows`` unfinished) for which the schedule runs the LLM."""
    return next(w for w in range(1, rows + 1) if schedule.due(w, rows))


def collected(llm_fixed: float, steps: int = 2) -> LLMSchedule:
    """A schedule after ``steps`` SLM steps over 8 rows; an SLM step costs 10 ms, tokens nothing."""
    schedule = LLMSchedule(CostModel(slm=(0.01, 0.0), llm=(llm_fixed, 0.0)))
    for _ in range(steps):
        schedule.slm_step(8, 8)
    return schedule


def test_cost_rule_thresholds():
    # 16 tokens over 20 ms; with 8 - w rows decoding, one more step gains (8 - w) / 10 ms.
    # LLM at 10 ms: run once (8 - w) / 0.01 < 16 / 0.03, i.e. w >= 3.
    assert fires_at(collected(0.01)) == 3
    # LLM at 100 ms: 16 / 0.12 = 133 tokens/s, so run only once a single row is left decoding.
    assert fires_at(collected(0.1)) == 7


def test_dearer_llm_waits_for_more_rows():
    thresholds = [fires_at(collected(f)) for f in (0.001, 0.01, 0.03, 0.1, 1.0)]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]


def test_rows_routed_before_the_slm_cost_no_slm_forward():
    schedule = LLMSchedule(CostModel(slm=(0.01, 0.001), llm=(0.05, 0.002)))
    schedule.slm_step(3, 0)  # a blind router sent all three rows to the LLM
    assert schedule.gain == 3 and schedule.spent == pytest.approx(3 * 0.002)
    schedule.slm_step(2, 2)
    assert schedule.gain == 5 and schedule.spent == pytest.approx(5 * 0.002 + 0.01 + 2 * 0.001)


def test_a_fresh_collection_waits():
    schedule = collected(0.01)
    assert schedule.due(4, 8)
    schedule.llm_ran()
    assert not schedule.due(4, 8)  # nothing collected yet: another SLM step gains more
    schedule.llm_ran(still_waiting=4)  # stitch rows the LLM keeps count as collected
    assert schedule.gain == 4


@pytest.mark.parametrize("min_batch", [0, 1, 3, 8])
@pytest.mark.parametrize("llm", [(0.0, 0.0), (0.01, 0.0), (10.0, 0.0)])
def test_never_deadlocks_never_runs_idle(min_batch, llm):
    schedule = LLMSchedule(CostModel(slm=(0.01, 0.0), llm=llm), min_batch)
    for unfinished in (1, 5, 8):
        assert schedule.due(unfinished, unfinished)
        assert not schedule.due(0, unfinished)


def test_fixed_min_batch_and_fallback():
    costs = CostModel(slm=(0.01, 0.0), llm=(1.0, 0.0))
    assert fires_at(LLMSchedule(costs, min_batch=3)) == 3
    assert LLMSchedule(costs, min_batch=3).rule == "llm_min_batch=3"
    assert LLMSchedule(costs).rule == "costs"
    unpriced = LLMSchedule(CostModel(slm=(0.0, 0.0), llm=(0.0, 0.0)))
    assert unpriced.rule == "half the rows"
    assert fires_at(unpriced) == 4  # half the rows in flight
    assert fires_at(unpriced, rows=5) == 3


def llm_forwards(make_runtime, tokenizer, cost_llm: str) -> tuple[list[list[int]], list[list[int]]]:
    """Outputs and the rows fed per LLM forward of one batch-8 run at r = 0.25 (no rows ride
    along, so each forward holds only the rows it was run for)."""
    rt = make_runtime(
        router="random", p="0.25", batch_size=8, cost_llm=cost_llm, llm_lookahead="false"
    )
    rt.decoder.trace = []
    out = [r.token_ids for r in rt.generate(requests(tokenizer))]
    return out, [fed for model, fed in rt.decoder.trace if model == "llm"]


def test_run_info_names_the_rule(make_runtime):
    assert make_runtime().info()["routed"]["llm_runs_by"] == "costs"
    assert make_runtime(schedule="lockstep").info()["routed"]["llm_runs_by"] == "llm_min_batch=1"
    assert make_runtime(cost_slm="0:0", cost_llm="0:0").info()["routed"]["llm_runs_by"] == (
        "half the rows"
    )


def test_decoder_follows_the_costs(make_runtime, tokenizer):
    cheap_out, cheap = llm_forwards(make_runtime, tokenizer, "0.00001:0")
    dear_out, dear = llm_forwards(make_runtime, tokenizer, "10:0")
    assert cheap_out == dear_out  # the schedule moves forwards, never tokens
    assert len(dear) < len(cheap)
    # an LLM priced far above an SLM step waits for more rows per forward
    assert sum(len(rows) for rows in dear) / len(dear) > sum(len(rows) for rows in cheap) / len(
        cheap
    )


def test_with_costs_fills_only_what_was_left_to_measurement():
    costs = CostModel(slm=(0.002, 0.0), llm=(0.02, 0.001), router=0.0005)
    cfg = with_costs(load_config({"cost_llm": "0.05:0"}), costs)
    assert (cfg.cost_slm, cfg.cost_llm, cfg.cost_router) == ((0.002, 0.0), (0.05, 0.0), 0.0005)


def test_the_runs_end_waits_for_the_row_it_ends_on():
    # 16 tokens over 20 ms and an LLM forward at 30 ms: the rate rule runs once 5 of 8 rows wait,
    # and an SLM step over the 3 left costs 10 ms, so a forward is worth 3 steps of the run's end.
    schedule = collected(0.03)
    assert schedule.due(5, 8) and not schedule.due(4, 8)
    assert not schedule.due(5, 8, lag=2)  # a decoding row has nearly as far to go: it waits
    assert schedule.due(5, 8, lag=3)
    assert not schedule.due(5, 8, lag=-10)  # the waiting rows end well before another row
    assert not schedule.due(4, 8, lag=50)  # lagging never runs what the rate rule holds
    assert schedule.due(8, 8, lag=0)  # every row waits: never a deadlock
    assert LLMSchedule(schedule.costs, min_batch=1).due(1, 8, lag=-10)  # lockstep stays lockstep


def test_lag_reads_the_token_budgets():
    def row(budget, generated, waiting):
        return SimpleNamespace(left=budget - generated, waiting=waiting)

    waiting = [row(64, 10, True), row(64, 30, True)]
    decoding = [row(64, 40, False), row(16, 2, False)]
    assert end_lag(waiting, waiting + decoding) == 54 - 24
    assert end_lag(waiting, waiting) == 54  # nothing decodes: the schedule runs anyway


def test_the_end_rule_applies_once_no_request_is_queued(make_runtime, tokenizer):
    rt = make_runtime(router="random", p="0.3", batch_size=2)
    dec, admitted, lags = rt.decoder, [0], []
    admit, due = dec._admit, dec.schedule.due

    def counting_admit(*args, **kw):
        admitted[0] += 1
        return admit(*args, **kw)

    def recording_due(waiting, unfinished, lag=None):
        lags.append((admitted[0], waiting, lag))
        return due(waiting, unfinished, lag)

    dec._admit, dec.schedule.due = counting_admit, recording_due
    reqs = requests(tokenizer)
    rt.generate(reqs)
    queued = [lag for n, w, lag in lags if n < len(reqs)]
    closing = [lag for n, w, lag in lags if n == len(reqs) and w]
    assert queued and all(lag is None for lag in queued)
    assert closing and all(isinstance(lag, int) for lag in closing)
