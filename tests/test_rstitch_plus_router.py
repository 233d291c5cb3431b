"""R-Stitch+'s router in the decoder's stitching path, with hand-set policies whose answers are known.

A policy that always switches must decode as `entropy` at the same tau, one that never does as the
SLM alone; a policy that switches on a condition of the hidden state and the context length is
replayed position by position against plain forwards (``routing_reference``): the policy was
consulted exactly where the SLM held control above tau, and obeyed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from routing_reference import (
    TIE,
    PlainModel,
    Replay,
    Routing,
    normalized_entropy,
    replay,
    rstitch_plus_rule,
    stitch_rule,
)
from safetensors.torch import load_file

from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.runtime import RoutedRuntime, build_runtime
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.rstitch_plus import PolicyNet

PROMPTS = ["The cat sat", "2+2=", "Once upon a time, in a land far", "x", "Hello world\n", "zz top"]
N_NEW = 20
TAU = 0.8  # normalized entropy near the middle of the tiny SLM's spread
SCALE = 32.0  # context_scale
COSTS = {"cost_slm": "0.001:0.0001", "cost_llm": "0.01:0.001"}


@dataclass
class Ckpt:
    folder: str
    weights: dict[str, torch.Tensor] = field(repr=False)
    params: int = 0


def policy(folder, hidden: int, how: str) -> Ckpt:
    """A width-1 policy saved as a checkpoint: ``always``/``never`` switch, or ``mixed``: switch
    where relu(4 h[0] + n - 20) > 0.05 (n the context length; one token moves it by 1, so a context
    off by one changes decisions near n = 20)."""
    net = PolicyNet(hidden, width=1, context_scale=SCALE)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        if how == "mixed":
            net.inp.weight[0, 0] = 4.0  # the hidden state's first feature
            net.inp.weight[0, hidden] = SCALE  # the context over its scale, back in tokens
            net.inp.bias[0] = -20.0
            net.out.weight[:, 0] = torch.tensor([-1.0, 1.0])
            net.out.bias[:] = torch.tensor([0.05, -0.05])
        else:
            net.out.bias[1 if how == "always" else 0] = 1.0
    config = {
        "kind": "rstitch-plus",
        "hidden_size": hidden,
        "vocab_size": 98,
        "width": 1,
        "context_scale": SCALE,
        "threshold": TAU,
    }
    checkpoint.save(folder, net, config)
    params = sum(p.numel() for p in net.parameters())
    return Ckpt(str(folder), load_file(folder / "model.safetensors"), params)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, pair):
    hidden = pair[0].config.hidden_size
    return {h: policy(tmp_path_factory.mktemp(h), hidden, h) for h in ("always", "never", "mixed")}


@pytest.fixture(scope="module")
def plain(pair):
    return PlainModel(pair[0]), PlainModel(pair[1])


def runtime(pair, tokenizer, batch: int, **args: str) -> RoutedRuntime:
    schedule = {"batch_size": str(batch), "llm_min_batch": "3" if batch > 1 else "0"}
    cfg = load_config({**COSTS, **schedule, **args})
    return build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tokenizer)


def generate(rt: RoutedRuntime, tokenizer):
    from lm_eval_routed.core.rows import GenRequest

    reqs = [GenRequest(tokenizer(p)["input_ids"], N_NEW, seed=i) for i, p in enumerate(PROMPTS)]
    return reqs, rt.generate(reqs)


def outputs(results) -> list[tuple[list[int], list[int]]]:
    return [(r.token_ids, r.record.llm_positions) for r in results]


def consultations(plain, prompt: list[int], tokens: list[int], llm_positions: list[int]) -> int:
    """Positions where the SLM held control (first position, after an SLM token, or after an LLM
    token of entropy <= tau) and its own entropy exceeded tau: where the policy must be asked."""
    slm, llm = plain
    routed, count = set(llm_positions), 0
    for k in range(len(tokens)):
        held_by_llm = (k - 1) in routed and normalized_entropy(
            llm.at(prompt + tokens[: k - 1]).logits
        ) > TAU
        h = normalized_entropy(slm.at(prompt + tokens[:k]).logits)
        assert held_by_llm or abs(h - TAU) >= TIE  # no tie where the count is decided
        count += not held_by_llm and h > TAU
    return count


def test_always_switch_decodes_as_entropy_and_never_as_the_slm(pair, tokenizer, ckpts):
    _, entropy = generate(
        runtime(pair, tokenizer, 1, router="entropy", threshold=str(TAU)), tokenizer
    )
    _, slm_only = generate(runtime(pair, tokenizer, 1, router="slm-only"), tokenizer)
    _, always = generate(
        runtime(pair, tokenizer, 1, router="rstitch-plus", router_ckpt=ckpts["always"].folder),
        tokenizer,
    )
    _, never = generate(
        runtime(pair, tokenizer, 1, router="rstitch-plus", router_ckpt=ckpts["never"].folder),
        tokenizer,
    )
    assert outputs(always) == outputs(entropy)
    assert sum(len(r.record.llm_positions) for r in always) > 10  # the LLM did write
    assert [r.token_ids for r in never] == [r.token_ids for r in slm_only]
    assert all(r.record.llm_positions == [] for r in never)
    assert sum(r.record.router_calls for r in never) > 0  # asked, and told to stay


@pytest.mark.parametrize("batch", [1, 8])
def test_the_policy_is_consulted_exactly_above_tau_and_obeyed(pair, tokenizer, plain, ckpts, batch):
    ck = ckpts["mixed"]
    rt = runtime(pair, tokenizer, batch, router="rstitch-plus", router_ckpt=ck.folder)
    reqs, results = generate(rt, tokenizer)
    rule = rstitch_plus_rule(ck.weights, TAU, SCALE)
    found = Replay()
    for i, (req, res) in enumerate(zip(reqs, results)):
        replay(
            *plain,
            req.prompt_ids,
            res.token_ids,
            res.record.llm_positions,
            Routing(stitch=rule, handback=stitch_rule(TAU)),
            found,
            f"#{i}",
        )
        calls = consultations(plain, req.prompt_ids, res.token_ids, res.record.llm_positions)
        assert res.record.router_calls == calls, f"#{i}"
        assert res.record.params_router == ck.params == 65 + 1 + 2 + 2
    assert found.mismatches == []
    assert found.takeovers >= 3 and found.handbacks >= 2, found
    # the policy said no often enough that its answer, not the entropy alone, shaped the output
    consulted = sum(r.record.router_calls for r in results)
    assert consulted - found.takeovers >= 5, (consulted, found)


def test_batch_one_and_eight_decode_alike(pair, tokenizer, ckpts):
    args = {"router": "rstitch-plus", "router_ckpt": ckpts["mixed"].folder}
    _, one = generate(runtime(pair, tokenizer, 1, **args), tokenizer)
    _, eight = generate(runtime(pair, tokenizer, 8, **args), tokenizer)
    assert outputs(one) == outputs(eight)
    assert [r.record.router_calls for r in one] == [r.record.router_calls for r in eight]


# -- bad checkpoints: one line, before the models load where their sizes are at hand -------------


def edited(src: Ckpt, dst, **changes) -> str:
    """A copy of ``src``'s folder with config keys changed (None: removed)."""
    dst.mkdir()
    config = json.loads((Path(src.folder) / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "model.safetensors").write_bytes((Path(src.folder) / "model.safetensors").read_bytes())
    return str(dst)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ("another SLM", "trained for SLM hidden size 32, but slm="),
        ({"vocab_size": 50}, "trained for a vocabulary of 50, but slm="),
        (
            {"width": 4},
            r"tensor inp.weight has shape \[1, 65\] but the config's sizes need \[4, 65\]",
        ),
        ({"kind": "r2r"}, "is a 'r2r' router checkpoint, not 'rstitch-plus'"),
        ({"threshold": None}, "records no threshold"),
        ({"context_scale": -1}, "context_scale=-1 must be a positive number"),
    ],
)
def test_a_bad_checkpoint_is_one_line_before_loading(
    tmp_path, pair, tokenizer, ckpts, no_loading, changes, says
):
    pair[0].save_pretrained(tmp_path / "slm")
    if changes == "another SLM":  # a whole checkpoint, trained for an SLM of hidden size 32
        folder = policy(tmp_path / "other", 32, "always").folder
    else:
        folder = edited(ckpts["always"], tmp_path / "ckpt", **changes)
    cfg = load_config(
        {"slm": str(tmp_path / "slm"), "router": "rstitch-plus", "router_ckpt": folder}
    )
    with pytest.raises(ConfigError, match=says) as err:
        build_runtime(cfg)  # no_loading: fails the test if a model loads first
    assert "\n" not in str(err.value)


def test_a_checkpoint_of_another_slm_is_refused_when_models_are_handed_in(
    tmp_path, pair, tokenizer, ckpts
):
    folder = policy(tmp_path / "other", 32, "always").folder  # cfg.slm is demo:slm: not read
    with pytest.raises(ConfigError, match="trained for SLM hidden size 32, but slm has 64"):
        runtime(pair, tokenizer, 1, router="rstitch-plus", router_ckpt=folder)
    weights = tmp_path / "other" / "model.safetensors"
    with pytest.raises(ConfigError, match="takes a router_ckpts/<name>/ folder"):
        runtime(pair, tokenizer, 1, router="rstitch-plus", router_ckpt=str(weights))
