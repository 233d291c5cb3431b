"""R-Stitch+'s RL trainer: rollouts that sample the policy, their trajectories and L-hat, the update,
resuming, the checkpoint, and the latency model as a run's modeled-latency cost.

Two independent accounts of one decode must agree: the decoder prices every forward it runs by the
latency model (``latency_model=``), and ``trajectory_of`` + ``latency_of`` price the forwards R-Stitch's
rules say a trajectory costs. A decode that ran a forward the rules do not have (or the reverse), or a
trajectory split at the wrong place, makes them differ.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.accounting import Model
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import latency_model
from lm_eval_routed.loading.latency_model import (
    LatencyModel,
    ModelLatency,
    Span,
    Trajectory,
    latency_of,
)
from lm_eval_routed.loading.runtime import build_runtime
from lm_eval_routed.routers.rstitch_plus import SWITCH, PolicyNet
from lm_eval_routed.training.rstitch_rollouts import (
    Decision,
    Prompt,
    RolloutResult,
    SampledPolicy,
    rollouts,
    trajectory_of,
)
from lm_eval_routed.training.rstitch_train import (
    RStitchPlusOptions,
    _new_state,
    train_rstitch_plus,
    train_step,
)

TAU = 0.8  # normalized entropy near the middle of the tiny SLM's spread (test_rstitch_plus_router)
PROMPTS = ["The cat sat", "2+2=", "Once upon a time", "x", "Hello world\n", "zz top"]
# every constant its own size, the SLM's unlike the LLM's: a forward priced as the wrong model's,
# with the wrong cache length or the wrong token count shows in the sum
LATENCY = LatencyModel(
    ModelLatency(a=1e-7, b=3e-6, c=2e-4, d=1e-3, c_decode=5e-6, d_decode=2e-3),
    ModelLatency(a=7e-7, b=1e-5, c=9e-4, d=6e-3, c_decode=3e-5, d_decode=11e-3),
)


def parity(text: str, row: dict) -> bool:
    """A checker whose verdict depends on the rollout, so groups hold both outcomes."""
    return len(text) % 2 == 0


def _runtime(pair, tokenizer, batch: int = 4, **args):
    cfg = {"router": "entropy", "threshold": str(TAU), "batch_size": str(batch), **args}
    if "latency_model" not in args:
        cfg |= {"cost_slm": "0:0", "cost_llm": "0:0"}
    return build_runtime(load_config(cfg), slm=pair[0], llm=pair[1], tokenizer=tokenizer)


def _net(hidden: int, p_switch: float = 0.5, seed: int = 0) -> PolicyNet:
    torch.manual_seed(seed)
    net = PolicyNet(hidden, width=8, context_scale=64.0)
    with torch.no_grad():
        net.out.bias[SWITCH] += math.log(p_switch / (1 - p_switch))
    return net


def _prompts(tokenizer) -> list[Prompt]:
    return [Prompt(tokenizer(p)["input_ids"], {"text": p}) for p in PROMPTS]


# -- trajectories ------------------------------------------------------------------------------


def test_trajectory_opens_an_llm_span_at_each_switch():
    who = ["slm", "slm", "llm", "llm", "slm", "llm", "llm", "llm"]
    # the LLM handed back after position 5 and the SLM's next position switched again at 6
    traj = trajectory_of(10, who, {2, 5, 6})
    assert traj == Trajectory(
        10,
        (
            Span(Model.SLM, 2),
            Span(Model.LLM, 2),
            Span(Model.SLM, 1),
            Span(Model.LLM, 1),
            Span(Model.LLM, 2),
        ),
    )
    with pytest.raises(ValueError, match="without a switch"):
        trajectory_of(10, ["slm", "llm"], set())


def test_decoders_priced_forwards_equal_the_trajectorys_l_hat(pair, tokenizer, tmp_path):
    """The decoder's own modeled latency, priced by the latency model forward by forward, equals
    L-hat of the trajectory rebuilt from the record and the policy's decisions: at batch 1, and in a
    batch whose rows do not ride along in each other's LLM forwards (riding feeds the LLM a row's
    tokens before the rules' single request would, priced per token)."""
    path = tmp_path / "latency.json"
    latency_model.save(path, LATENCY)
    for batch, riding in ((1, "true"), (4, "false")):
        rt = _runtime(pair, tokenizer, batch, latency_model=str(path), llm_lookahead=riding)
        assert rt.decoder.costs.source == "latency_model"
        policy = SampledPolicy(_net(pair[0].config.hidden_size), TAU)
        prompts = _prompts(tokenizer)
        reqs = [GenRequest(p.ids, 24, seed=i) for i, p in enumerate(prompts)]
        results = rt.with_router(policy).decoder.generate(reqs, batch)
        switched = 0
        for i, (prompt, result) in enumerate(zip(prompts, results)):
            decisions = policy.decisions[i]
            at = {d.context - len(prompt.ids) for d in decisions if d.switch}
            switched += len(at)
            who = ["slm"] * result.record.tokens
            for k in result.record.llm_positions:
                who[k] = "llm"
            traj = trajectory_of(len(prompt.ids), who, at)
            assert latency_of(traj, LATENCY) == pytest.approx(
                result.record.modeled_latency_s, rel=1e-9
            )
            assert result.record.router_calls == len(decisions)  # one record per consultation
        assert switched > 3  # the policy did hand over, several times


def test_sampled_actions_follow_the_request_not_the_batch(pair, tokenizer):
    hidden = pair[0].config.hidden_size
    runs = []
    for batch in (1, 4):
        rt = _runtime(pair, tokenizer, batch)
        out = rollouts(rt, _net(hidden), TAU, _prompts(tokenizer), 2, 7, parity, LATENCY, 20)
        runs.append([(r.prompt, r.text, [(d.context, d.switch) for d in r.decisions]) for r in out])
        # logp recorded is the log-probability of the action taken under the sampling net,
        # recomputed in float64 from its weights (Linear, ReLU, Linear: the checkpoint's layout)
        w = {k: v.double() for k, v in _net(hidden).state_dict().items()}
        for r in out:
            for d in r.decisions:
                x = d.features.double()
                inner = torch.relu(w["inp.weight"] @ x + w["inp.bias"])
                logp = torch.log_softmax(w["out.weight"] @ inner + w["out.bias"], -1)
                taken = SWITCH if d.switch else 1 - SWITCH
                assert d.logp == pytest.approx(float(logp[taken]), abs=1e-5)
                # and the features are the SLM's state beside the context over its scale
                assert float(d.features[-1]) == pytest.approx(d.context / 64.0)
    assert runs[0] == runs[1]
    switches = [s for _, _, ds in runs[0] for _, s in ds]
    assert 0 < sum(switches) < len(switches)  # both actions were drawn


def _acts(results: list[RolloutResult]) -> list[tuple]:
    return [tuple((d.context, d.switch) for d in r.decisions) for r in results]


def test_group_rollouts_differ_only_by_their_seeds(pair, tokenizer):
    rt = _runtime(pair, tokenizer)
    hidden = pair[0].config.hidden_size
    a = rollouts(rt, _net(hidden), TAU, _prompts(tokenizer)[:2], 4, 1, parity, LATENCY, 20)
    b = rollouts(rt, _net(hidden), TAU, _prompts(tokenizer)[:2], 4, 1, parity, LATENCY, 20)
    c = rollouts(rt, _net(hidden), TAU, _prompts(tokenizer)[:2], 4, 2, parity, LATENCY, 20)
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.prompt for r in a] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({tuple(d.switch for d in r.decisions) for r in a}) > 1  # a group explores
    assert _acts(a) != _acts(c)


# -- the update --------------------------------------------------------------------------------


def _rollout(group: int, correct: bool, switch: bool, feats: torch.Tensor, logp: float):
    decisions = tuple(Decision(5, f, switch, logp) for f in feats)
    traj = Trajectory(5, (Span(Model.SLM, 1),))
    return RolloutResult(group, "", correct, 0.5, 0.0, decisions, traj)


def test_an_update_raises_the_rewarded_action():
    """Rollouts that switched were right and those that stayed wrong: after the update the policy
    switches more on those features; a group whose rewards are equal moves nothing."""
    opts = RStitchPlusOptions(lam=0.1, updates=3, lr=1e-2, width=8, init_switch=0.5)
    state = _new_state(4, opts)
    feats = torch.randn(3, 5)
    p0 = torch.softmax(state.net.logits_of(feats), -1)[:, SWITCH].detach()
    half = math.log(0.5)
    batch = [_rollout(0, True, True, feats, half), _rollout(0, False, False, feats, half)]
    out = train_step(state, batch, opts)
    p1 = torch.softmax(state.net.logits_of(feats), -1)[:, SWITCH].detach()
    assert (p1 > p0).all()
    assert out["kept_groups"] == 1 and out["decisions_used"] == 6

    state = _new_state(4, opts)
    before = {k: v.clone() for k, v in state.net.state_dict().items()}
    equal = [_rollout(0, True, True, feats, half), _rollout(0, True, False, feats, half)]
    # same correctness and the same L-hat: equal rewards, the group is dropped
    out = train_step(state, equal, opts)
    assert out["dropped_groups"] == 1 and out["decisions_used"] == 0
    after = state.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_first_policy_switches_at_init_switch_everywhere():
    state = _new_state(6, RStitchPlusOptions(init_switch=0.9, width=4))
    p = torch.softmax(state.net.logits_of(torch.randn(7, 7) * 10), -1)[:, SWITCH]
    assert torch.allclose(p, torch.full((7,), 0.9))


# -- a run, resumed, and its checkpoint --------------------------------------------------------

OPTS = RStitchPlusOptions(
    threshold=TAU,
    lam=0.5,
    group=4,
    prompts_per_step=2,
    steps=3,
    updates=2,
    lr=5e-2,
    width=8,
    context_scale=64.0,
    max_new_tokens=16,
    seed=3,
    init_switch=0.5,
)


def test_a_resumed_run_ends_where_an_unbroken_one_does(pair, tokenizer, tmp_path):
    rt = _runtime(pair, tokenizer)
    prompts = _prompts(tokenizer)
    whole = train_rstitch_plus(
        rt, prompts, parity, OPTS, tmp_path / "a", tmp_path / "ckpt-a", LATENCY, "tiny"
    )
    first = RStitchPlusOptions(**{**OPTS.__dict__, "steps": 1})
    train_rstitch_plus(rt, prompts, parity, first, tmp_path / "b", None, LATENCY, "tiny")
    resumed = train_rstitch_plus(
        rt, prompts, parity, OPTS, tmp_path / "b", tmp_path / "ckpt-b", LATENCY, "tiny"
    )
    assert {k: v for k, v in whole.items() if k not in ("seconds", "checkpoint")} == {
        k: v for k, v in resumed.items() if k not in ("seconds", "checkpoint")
    }
    a = load_file(tmp_path / "ckpt-a" / "model.safetensors")
    b = load_file(tmp_path / "ckpt-b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="holds 3 finished steps, more than --steps=2"):
        fewer = RStitchPlusOptions(**{**OPTS.__dict__, "steps": 2})
        train_rstitch_plus(rt, prompts, parity, fewer, tmp_path / "b", None, LATENCY, "tiny")
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2]
    for key in ("reward", "accuracy", "latency_s", "switch_rate", "llm_share"):
        assert key in json.loads(lines[-1])
    # the policy was updated (some group had both outcomes) and moved away from where it began
    start = _new_state(pair[0].config.hidden_size, OPTS).net.state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in a)


def test_the_checkpoint_runs_as_rstitch_plus_with_its_latency_model(pair, tokenizer, tmp_path):
    rt = _runtime(pair, tokenizer)
    opts = RStitchPlusOptions(**{**OPTS.__dict__, "steps": 1})
    train_rstitch_plus(
        rt, _prompts(tokenizer), parity, opts, tmp_path / "w", tmp_path / "ckpt", LATENCY, "tiny"
    )
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["kind"] == "rstitch-plus" and config["threshold"] == TAU
    assert config["training"]["lam"] == 0.5 and config["training"]["latency_units"] == "seconds"
    assert latency_model.load(tmp_path / "ckpt" / "latency.json") == LatencyModel(
        LATENCY.slm, LATENCY.llm, {}
    )
    run = _runtime(
        pair,
        tokenizer,
        router="rstitch-plus",
        router_ckpt=str(tmp_path / "ckpt"),
        threshold=None,
        latency_model=str(tmp_path / "ckpt" / "latency.json"),
    )
    results = run.generate([GenRequest(p.ids, 12) for p in _prompts(tokenizer)])
    assert all(1 <= r.record.tokens <= 12 and r.record.modeled_latency_s > 0 for r in results)
    assert sum(r.record.router_calls for r in results) > 0  # its policy was consulted
    assert run.info()["routed"]["cost_model"]["source"] == "latency_model"


# -- the latency model as a run's cost ---------------------------------------------------------


def test_latency_model_and_fixed_costs_are_one_or_the_other(tmp_path):
    with pytest.raises(ConfigError, match="give one or the other"):
        load_config({"latency_model": "x.json", "cost_slm": "0.1:0.01"})


def test_an_unreadable_latency_model_stops_the_run_before_loading(tmp_path, no_loading):
    bad = tmp_path / "lat.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(ConfigError, match="latency model"):
            build_runtime(load_config({"latency_model": str(path)}))


def test_options_out_of_range_are_refused():
    for bad, flag in (
        ({"group": 1}, "--group"),
        ({"threshold": 1.5}, "--threshold"),
        ({"lam": -1.0}, "--lam"),
        ({"init_switch": 1.0}, "--init-switch"),
        ({"steps": 0}, "--steps"),
    ):
        with pytest.raises(ConfigError, match=flag):
            RStitchPlusOptions(**bad).check()
