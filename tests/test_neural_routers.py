"""R2R and CITER routers: checkpoint formats, fit checks, threshold semantics, use in the decoder."""

from __future__ import annotations

import argparse
import collections

import pytest
import torch

from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
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
    from lm_eval_routed.config_args import load_config
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


class TorchvisionMLP(torch.nn.Sequential):
    """torchvision.ops.MLP (torchvision/ops/misc.py, 0.28.0, the release for torch 2.13) with a norm
    layer and the defaults CITER leaves (bias, no inplace), written here independently of our
    CiterNet: for every hidden width but the last, Linear -> norm -> activation -> Dropout; then
    Linear -> Dropout. Not imported: PyPI's torchvision wheels need CUDA torch's libraries, and the
    suite runs on CPU torch."""

    def __init__(self, in_channels, hidden_channels, norm_layer, activation_layer, dropout):
        layers, width = [], in_channels
        for out in hidden_channels[:-1]:
            layers += [torch.nn.Linear(width, out), norm_layer(out), activation_layer()]
            layers.append(torch.nn.Dropout(dropout))
            width = out
        layers += [torch.nn.Linear(width, hidden_channels[-1]), torch.nn.Dropout(dropout)]
        super().__init__(*layers)


class AuthorsConfidenceModel(torch.nn.Module):
    """CITER's released router as its paper and code describe it: MLP, Linear(h, 1), sigmoid."""

    def __init__(self, h):
        super().__init__()
        self.mlp = TorchvisionMLP(h, [2 * h, h], torch.nn.BatchNorm1d, torch.nn.ReLU, 0.1)
        self.linear = torch.nn.Linear(h, 1)
        self.sigmoid = torch.nn.Sigmoid()

    def forward(self, hidden_states):  # (batch, seq, h) -> (batch, seq, 1)
        b, s, h = hidden_states.shape
        return self.sigmoid(self.linear(self.mlp(hidden_states.view(-1, h))).view(b, s, -1))


def authors_model(h, seed=0):
    """A reference with every weight and BatchNorm statistic away from its initial value."""
    torch.manual_seed(seed)
    ref = AuthorsConfidenceModel(h)
    with torch.no_grad():
        for name, tensor in ref.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5
                    if "var" in name
                    else torch.randn_like(tensor) * 0.3
                )
    return ref.eval()


def citer_router(ref, slm):
    from lm_eval_routed.config_args import load_config
    from lm_eval_routed.routers.base import make_router

    return make_router("citer", load_config(router="citer", router_ckpt=str(ref)), slm)


AUTHORS_KEYS = [
    "mlp.0.weight",
    "mlp.0.bias",
    "mlp.1.weight",
    "mlp.1.bias",
    "mlp.1.running_mean",
    "mlp.1.running_var",
    "mlp.1.num_batches_tracked",
    "mlp.4.weight",
    "mlp.4.bias",
    "linear.weight",
    "linear.bias",
]


def test_citer_net_has_the_authors_layout():
    assert list(CiterNet(8).state_dict()) == AUTHORS_KEYS
    assert list(AuthorsConfidenceModel(8).state_dict()) == AUTHORS_KEYS


def test_authors_state_dict_loads_and_scores_like_the_reference(tmp_path, pair, make_runtime):
    from lm_eval_routed.routers.base import StepView

    slm = pair[0]
    ref = authors_model(slm.config.hidden_size)
    path = tmp_path / "mlp_iter_2876.pth"
    torch.save(ref.state_dict(), path)  # as their mlp_training.py saves it
    router = citer_router(path, slm)
    assert router.threshold == 0.9  # their files hold no threshold: the README's 0.9
    assert router.info()["threshold_rule"].startswith("CITER's default")
    assert router.num_params == sum(p.numel() for p in ref.parameters())
    torch.manual_seed(3)
    hidden = torch.randn(16, slm.config.hidden_size)
    view = StepView(torch.randn(16, 98), hidden, torch.zeros(16, dtype=torch.long))
    with torch.no_grad():
        expected = ref(hidden[:, None, :]).flatten()
        in_training = ref.train()(hidden[:, None, :]).flatten()
    got = router.confidence(view)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # eval mode matters: BatchNorm's running statistics, not the batch's, shape the confidences
    assert (in_training - expected).abs().max() > 1e-2
    assert torch.equal(router.route(view), expected < 0.9)
    assert 0 < int((expected < 0.9).sum()) < 16  # both decisions occur
    # and the decoder runs on it, at a given threshold
    rt = make_runtime(router="citer", router_ckpt=str(path), threshold="0.5")
    res = rt.generate([GenRequest([5, 6, 7], 6, seed=0)])
    assert res[0].record.tokens == 6 and rt.router.info()["threshold_rule"] == "given"


def test_authors_state_dict_mistakes_are_one_line(tmp_path, pair, make_runtime):
    slm = pair[0]
    h = slm.config.hidden_size
    state = authors_model(h).state_dict()

    def refused(obj, needle, name="mlp_iter_1.pth"):
        torch.save(obj, tmp_path / name)
        with pytest.raises(ConfigError) as err:
            make_runtime(router="citer", router_ckpt=str(tmp_path / name))
        assert needle in str(err.value) and "\n" not in str(err.value)

    refused(authors_model(32).state_dict(), "hidden size 32, but slm has 64")
    refused({k: v for k, v in state.items() if k != "linear.bias"}, "missing ['linear.bias']")
    refused({**state, "extra.weight": torch.zeros(1)}, "unexpected ['extra.weight']")
    refused({**state, "mlp.4.weight": torch.zeros(h, h)}, "mlp.4.weight has shape (64, 64)")
    refused({"mlp.0.bias": torch.zeros(3)}, "no 2-D 'mlp.0.weight'")
    refused({**state, "note": "hi"}, "not a state dict of tensors")
    refused({"model_type": "x", "state_dict": state}, "is an R2R router dict")
    refused([1, 2], "not a state dict of tensors")


def earlier_layout(h):
    """The layout this project used before: BatchNorm and ReLU after the second layer too."""
    return torch.nn.Sequential(
        torch.nn.Linear(h, 2 * h),
        torch.nn.BatchNorm1d(2 * h),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(2 * h, h),
        torch.nn.BatchNorm1d(h),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(h, 1),
    )


def test_earlier_layout_is_refused_with_one_line(tmp_path, pair, make_runtime):
    h = pair[0].config.hidden_size
    holder = torch.nn.Module()
    holder.mlp = earlier_layout(h)
    checkpoint.save(tmp_path / "old", holder, {"kind": "citer", "hidden_size": h, "threshold": 0.5})
    torch.save(holder.state_dict(), tmp_path / "old.pth")
    for ref in (tmp_path / "old", tmp_path / "old.pth"):
        with pytest.raises(ConfigError) as err:
            make_runtime(router="citer", router_ckpt=str(ref))
        assert "earlier CITER layout" in str(err.value) and "\n" not in str(err.value)


def test_r2r_preset_reproduces_the_per_benchmark_thresholds():
    from lm_eval_routed.config_args import PRESETS_DIR, load_config

    # R2R's eval config: aime 0.40595959595959596, gpqa 0.42, livecodebench 0.1387
    assert load_config({"config": "r2r"}).threshold == 0.40595959595959596
    text = (PRESETS_DIR / "r2r.yaml").read_text()
    for value in ("threshold=0.40595959595959596", "threshold=0.42", "threshold=0.1387"):
        assert value in text
        cfg = load_config({"config": "r2r", "threshold": value.partition("=")[2]})
        assert cfg.threshold == float(value.partition("=")[2]) and cfg.router == "r2r"


def test_shipped_demo_citer_has_the_authors_layout():
    from lm_eval_routed.routers.citer import check_layout

    ckpt, state, weights = checkpoint.load("demo-citer", "citer")
    assert list(state) and set(state) == set(AUTHORS_KEYS)
    check_layout(state, CiterNet(ckpt["hidden_size"]), weights)
    assert 0 < ckpt["threshold"] < 1
