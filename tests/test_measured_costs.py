"""The cost model a run measures when no costs are given (the default every other test pins away):
the fit itself on a clock whose answers are known, and an lm-eval run that measures at start-up,
records the figures in its run info and prices each sample's forwards with them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import write_workspace

from lm_eval_routed.loading import costs


class ClockedEngine:
    """An engine whose forward over n tokens takes exactly ``fixed + per_token * n`` on a fake clock."""

    device = torch.device("cpu")
    pad_id = 0

    def __init__(self, fixed: float, per_token: float) -> None:
        self.fixed, self.per_token, self.now = fixed, per_token, 100.0

    def new_cache(self, rows: int, length: int) -> None:
        return None

    def forward(self, cache, slots, held, tokens) -> None:
        self.now += self.fixed + self.per_token * len(tokens[0])


def test_the_fit_recovers_the_forward_cost(monkeypatch):
    engine = ClockedEngine(fixed=0.02, per_token=0.0005)
    monkeypatch.setattr(costs, "time", SimpleNamespace(perf_counter=lambda: engine.now))
    fixed, per_token = costs.measure_forward_cost(engine)
    assert fixed == pytest.approx(0.02, rel=1e-6) and per_token == pytest.approx(0.0005, rel=1e-6)


def priced(record: dict, costs: dict) -> float:
    """A sample's forwards and router calls priced by the run's cost model, each forward in full."""
    (slm_fixed, slm_token), (llm_fixed, llm_token) = costs["slm"], costs["llm"]
    return (
        record["slm_calls"] * slm_fixed
        + record["slm_forward_tokens"] * slm_token
        + record["llm_calls"] * llm_fixed
        + record["llm_forward_tokens"] * llm_token
        + record["router_calls"] * costs["router"]
    )


def test_a_run_without_costs_measures_and_prices_with_them(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    root = write_workspace(tmp_path)
    # no cost_slm / cost_llm: measured at start-up; batch size 1, so no row rides along in another's
    # LLM forward (a rider is charged its tokens only) and every forward is priced in full
    args = f"slm={root / 'slm'},llm={root / 'llm'},router=random,p=0.5"
    results = lm_eval.simple_evaluate(
        model="routed",
        model_args=args,
        tasks=["tiny_routed"],
        task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False),
        limit=4,
        log_samples=True,
    )
    costs = results["config"]["routed"]["cost_model"]
    assert costs["source"] == "measured"
    for model in ("slm", "llm"):
        fixed, per_token = costs[model]
        assert fixed >= 0 and per_token >= 0 and fixed + per_token > 0, (model, costs)
    records = [rec for s in results["samples"]["tiny_routed"] for rec in s["routed"]]
    assert len(records) == 4 and sum(r["tokens_llm"] for r in records) > 0
    for rec in records:
        assert rec["modeled_latency_s"] > 0
        assert rec["modeled_latency_s"] == pytest.approx(priced(rec, costs), rel=1e-9)
