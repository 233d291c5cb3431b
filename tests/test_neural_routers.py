"""R2R and CITER routers: checkpoint formats, fit checks, threshold semantics, use in the decoder."""

from __future__ import annotations

import argparse
import collections

import pytest
import torch

from lm_eval_routed.config import ConfigError
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.citer import CiterNet
from lm_eval_routed.routers.r2r import R2RNet

SMALL = {"width": 32, "blocks": 2, "top_k": 10}


@pytest.fixture
def r2r_ckpt(tmp_path, pair):
    torch.manual_seed(0)
    hidden = pair[0].config.hidden_size
    net = R2RNet(hidden, **SMALL)
    cfg = {
        "kind": "r2r",
        "hidden_size": hidden,
        "vocab_size": 98,
        "threshold": 0.5,
        "threshold_rule": "test",
        **SMALL,
    }
    checkpoint.save(tmp_path / "r2r", net, cfg)
    return tmp_path / "r2r", net, cfg


@pytest.fixture
def citer_ckpt(tmp_path, pair):
    torch.manual_seed(0)
    net = CiterNet(pair[0].config.hidden_size).eval()
    cfg = {"kind": "citer", "hidden_size": pair[0].config.hidden_size, "threshold": 0.5}
    checkpoint.save(tmp_path / "citer", net, cfg)
    return tmp_path / "citer"


def reqs(tokenizer):
    return [
        GenRequest(tokenizer(p)["input_ids"], 20, seed=i) for i, p in enumerate(["abc", "hello w"])
    ]


def test_r2r_paper_size_is_about_56m():
    assert 55e6 < sum(p.numel() for p in R2RNet(1536).parameters()) < 57e6


def test_r2r_threshold_extremes(make_runtime, tokenizer, r2r_ckpt):
    folder = str(r2r_ckpt[0])
    everything = make_runtime(router="r2r", router_ckpt=folder, threshold="0").generate(
        reqs(tokenizer)
    )
    nothing = make_runtime(router="r2r", router_ckpt=folder, threshold="1").generate(
        reqs(tokenizer)
    )
    llm = make_runtime(router="llm-only").generate(reqs(tokenizer))
    slm = make_runtime(router="slm-only").generate(reqs(tokenizer))
    assert [r.token_ids for r in everything] == [r.token_ids for r in llm]
    assert [r.token_ids for r in nothing] == [r.token_ids for r in slm]
    rt = make_runtime(router="r2r", router_ckpt=folder)
    assert rt.router.threshold == 0.5 and rt.router.num_params == sum(
        p.numel() for p in r2r_ckpt[1].parameters()
    )
    assert len(rt.router.info()["router_ckpt_sha256"]) == 64


def test_r2r_decisions_follow_the_network(make_runtime, pair, r2r_ckpt):
    folder, net, _ = r2r_ckpt
    rt = make_runtime(router="r2r", router_ckpt=str(folder))
    torch.manual_seed(1)
    hidden, logits = torch.randn(5, 64), torch.randn(5, 98)
    token = logits.argmax(-1)
    from lm_eval_routed.routers.base import StepView

    got = rt.router.route(StepView(logits, hidden, token))
    with torch.no_grad():
        score = net.eval()(hidden, pair[0].get_input_embeddings()(token), logits)
    assert got.tolist() == (torch.sigmoid(score) >= 0.5).tolist()


def test_official_r2r_dict_loads_with_weights_only(tmp_path, make_runtime, tokenizer, r2r_ckpt):
    folder, net, cfg = r2r_ckpt
    official = {
        "model_type": "HiddenStatesTokenLogits",
        "init_args": {k: cfg[k] for k in ("hidden_size", "width", "blocks", "top_k")},
        "common_args": {"threshold": 0.5},
        "model_specific_args": {},
        "state_dict": collections.OrderedDict(net.state_dict()),
    }
    torch.save(official, tmp_path / "router.pt")
    ours = make_runtime(router="r2r", router_ckpt=str(folder)).generate(reqs(tokenizer))
    theirs = make_runtime(router="r2r", router_ckpt=str(tmp_path / "router.pt")).generate(
        reqs(tokenizer)
    )
    assert [r.token_ids for r in ours] == [r.token_ids for r in theirs]


def test_checkpoint_with_pickled_objects_is_refused(tmp_path, make_runtime):
    torch.save({"state_dict": {}, "evil": argparse.Namespace(run="rm -rf")}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="not a weights-only torch checkpoint"):
        make_runtime(router="r2r", router_ckpt=str(tmp_path / "bad.pt"))


def test_hidden_size_mismatch_is_clear(tmp_path, make_runtime):
    checkpoint.save(
        tmp_path / "wide",
        R2RNet(128, **SMALL),
        {"kind": "r2r", "hidden_size": 128, "threshold": 0.5, **SMALL},
    )
    with pytest.raises(ConfigError, match="hidden size 128, but slm has 64"):
        make_runtime(router="r2r", router_ckpt=str(tmp_path / "wide"))


def test_missing_or_wrong_checkpoint(make_runtime, citer_ckpt):
    with pytest.raises(ConfigError, match="needs router_ckpt"):
        make_runtime(router="r2r")
    with pytest.raises(ConfigError, match="is a 'citer' router checkpoint, not 'r2r'"):
        make_runtime(router="r2r", router_ckpt=str(citer_ckpt))


def test_citer_threshold_semantics(make_runtime, tokenizer, citer_ckpt):
    none = make_runtime(router="citer", router_ckpt=str(citer_ckpt), threshold="0").generate(
        reqs(tokenizer)
    )
    every = make_runtime(router="citer", router_ckpt=str(citer_ckpt), threshold="1").generate(
        reqs(tokenizer)
    )
    assert all(r.record.tokens_llm == 0 for r in none)
    assert all(r.record.tokens_slm == 0 for r in every)
    mid = make_runtime(router="citer", router_ckpt=str(citer_ckpt), batch_size=2).generate(
        reqs(tokenizer)
    )
    one = make_runtime(router="citer", router_ckpt=str(citer_ckpt)).generate(reqs(tokenizer))
    assert [r.token_ids for r in mid] == [r.token_ids for r in one]


def test_released_r2r_layout_loads_and_scores(tmp_path, pair):
    from lm_eval_routed.config import load_config
    from lm_eval_routed.routers.base import StepView, make_router
    from lm_eval_routed.routers.r2r import OFFICIAL_TYPE, OfficialR2RNet

    slm = pair[0]
    torch.manual_seed(0)
    init = {
        "hidden_states_size": 64,
        "logits_size": 10,
        "hidden_dims": [16, 32, 16],
        "expansion_factor": 2,
        "dropout_rate": 0.3,
        "normalize_input": True,
    }
    net = OfficialR2RNet(**init).eval()
    state = net.state_dict()
    # parameter names as in R2R's released files (their r2r/models/router.py layout)
    for key in (
        "combined_projection.weight",
        "logits_projection.weight",
        "layer_norm_token.weight",
        "backbone.input_projection.weight",
        "backbone.blocks.0.layer_norm.weight",
        "backbone.blocks.0.mlp.3.weight",
        "backbone.blocks.0.dim_change.weight",
        "backbone.output_layer.1.weight",
    ):
        assert key in state
    assert "backbone.blocks.2.dim_change.weight" not in state  # 16 -> 16 needs no projection
    saved = {**state, "token_embeddings.weight": torch.zeros(98, 64)}  # their "_all" variant
    torch.save(
        {
            "model_type": OFFICIAL_TYPE,
            "init_args": init,
            "common_args": {"threshold": 0.3, "input_type": ["hidden_states", "token", "logits"]},
            "model_specific_args": {},
            "state_dict": saved,
        },
        tmp_path / "default_router.pt",
    )
    router = make_router(
        "r2r", load_config(router="r2r", router_ckpt=str(tmp_path / "default_router.pt")), slm
    )
    assert router.threshold == 0.3 and router.num_params == sum(p.numel() for p in net.parameters())
    view = StepView(torch.randn(5, 98), torch.randn(5, 64), torch.tensor([1, 5, 9, 20, 40]))
    with torch.no_grad():
        emb = slm.get_input_embeddings()(view.token)
        expected = torch.sigmoid(net(view.hidden, emb, view.logits)) >= 0.3
    assert torch.equal(router.route(view), expected)
    wrong = {**init, "hidden_states_size": 32}
    torch.save(
        {
            "model_type": OFFICIAL_TYPE,
            "init_args": wrong,
            "common_args": {},
            "state_dict": OfficialR2RNet(**wrong).state_dict(),
        },
        tmp_path / "r.pt",
    )
    with pytest.raises(ConfigError, match="hidden size 32, but slm has 64"):
        make_router("r2r", load_config(router="r2r", router_ckpt=str(tmp_path / "r.pt")), slm)
    torch.save(
        {"model_type": "LogitsClassifier", "init_args": {"logits_size": 10}, "state_dict": {}},
        tmp_path / "l.pt",
    )
    with pytest.raises(ConfigError, match="only HiddenStatesTokenLMHeadLogitsClassifier"):
        make_router("r2r", load_config(router="r2r", router_ckpt=str(tmp_path / "l.pt")), slm)
