"""The LLM spread over devices with accelerate (placement.py): requests parsed and checked before any
weight loads, each process its own share under a launcher, and outputs of a model split between the
CPU and disk equal to the whole model's, token for token."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from accelerate import dispatch_model
from helpers import char_tokenizer
from transformers import Qwen2Config, Qwen2ForCausalLM

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core import native
from lm_eval_routed.core.engine import HFEngine, execution_device
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import placement, placement_keys
from lm_eval_routed.loading.placement_keys import PlacementRequest
from lm_eval_routed.loading.runtime import build_runtime, make_engine

PROMPTS = ["hello there", "abc", "x y z w", "0+0="]


def tiny_qwen2(layers: int, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=98,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        eos_token_id=1,
        bos_token_id=0,
        pad_token_id=1,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    """A tiny Qwen2 pair (1 and 4 layers) saved with a character tokenizer."""
    root = tmp_path_factory.mktemp("pair")
    tok = char_tokenizer()
    for name, layers, seed in (("slm", 1, 1), ("llm", 4, 2)):
        tiny_qwen2(layers, seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def _config(pair_dir, **args):
    base = {
        "slm": str(pair_dir / "slm"),
        "llm": str(pair_dir / "llm"),
        "cost_slm": "0.001:0.0001",
        "cost_llm": "0.01:0.001",
        "batch_size": 2,
    }
    return load_config({**base, **args})


def _decode(rt, tokens: int = 12) -> list[list[int]]:
    tok = rt.tokenizer
    reqs = [GenRequest(tok(p)["input_ids"], tokens, seed=i) for i, p in enumerate(PROMPTS)]
    rt.decoder.eos_ids = set()  # every row writes all its tokens
    return [r.token_ids for r in rt.generate(reqs)]


# -- the keys ---------------------------------------------------------------------------------


def test_device_maps_parse_in_every_form(tmp_path):
    assert placement_keys.parse_device_map("balanced") == "balanced"
    assert placement_keys.parse_device_map("cuda:1") == {"": 1}
    assert placement_keys.parse_device_map("cpu") == {"": "cpu"}
    want = {"model.layers.0": 0, "lm_head": "disk"}
    assert placement_keys.parse_device_map("model.layers.0:cuda:0;lm_head:disk") == want
    assert placement_keys.parse_device_map('{"model.layers.0": 0, "lm_head": "disk"}') == want
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"model.layers.0": "cuda:0", "lm_head": "disk"}))
    assert placement_keys.parse_device_map(str(path)) == want
    assert placement_keys.parse_max_memory("0:20GiB;cpu:1MiB") == {0: 20 * 2**30, "cpu": 2**20}
    assert placement_keys.parse_max_memory('{"cuda:1": "2GiB"}') == {1: 2 * 2**30}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"llm_device_map": "everywhere"}, "llm_device_map='everywhere': use auto"),
        ({"llm_device_map": "model.layers.0:tpu"}, "'tpu' is not a device"),
        ({"llm_device_map": "{not json"}, "llm_device_map is not valid JSON"),
        ({"llm_device_map": "missing.json"}, "no such file"),
        ({"llm_device_map": "auto", "max_memory": "cpu:lots"}, "'lots' for cpu is not a size"),
        ({"llm_device_map": "auto", "max_memory": "20GiB"}, "is not name:value"),
        ({"max_memory": "cpu:1GiB"}, "give llm_device_map too"),
        ({"offload_folder": "off"}, "give llm_device_map too"),
    ],
)
def test_bad_placement_keys_are_one_line(args, message):
    with pytest.raises(ConfigError) as err:
        load_config(args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_yaml_mappings_become_the_same_request(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "llm_device_map:\n  model.layers.0: 0\n  lm_head: cpu\nmax_memory:\n  0: 1GiB\n"
    )
    cfg = load_config({"config": str(path)})
    assert placement_keys.parse_device_map(cfg.llm_device_map) == {
        "model.layers.0": 0,
        "lm_head": "cpu",
    }
    assert placement_keys.parse_max_memory(cfg.max_memory) == {0: 2**30}


# -- refusals before any weight loads ---------------------------------------------------------


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights fails the test: refusals must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the placement was checked")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"llm_device_map": "cuda:0"}, "cuda:0 does not exist: this process sees 0 GPUs"),
        ({"llm_device_map": "model:cpu;lm_head:disk"}, "puts modules on disk: give offload_folder"),
        (
            {"llm_device_map": "model.layers:cpu;lm_head:cpu"},
            "leaves out model.embed_tokens.weight",
        ),
        ({"llm_device_map": "model:cpu;head:cpu"}, "names 'head', which is not a module"),
        (
            {"llm_device_map": "model:cpu;lm_head:cpu", "max_memory": "cpu:10KB"},
            "on cpu, which has 0.00 GiB under max_memory",
        ),
        (
            {"llm_device_map": "auto", "max_memory": "cpu:10KB"},
            "offload_folder=DIR to keep the rest on disk",
        ),
        ({"llm_device_map": "balanced", "max_memory": "3:1GiB"}, "cuda:3 does not exist"),
    ],
)
def test_impossible_placements_are_refused_before_loading(pair_dir, no_weights, args, message):
    if torch.cuda.is_available():
        pytest.skip("the device errors here assume a machine without GPUs")
    with pytest.raises(ConfigError) as err:
        build_runtime(_config(pair_dir, **args))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_memory_that_cannot_hold_the_model_names_its_size(pair_dir):
    config = Qwen2Config.from_pretrained(pair_dir / "llm")
    total = sum(p.numel() * 4 for p in tiny_qwen2(4, 2).parameters())
    with pytest.raises(ConfigError, match=f"need {total / 2**30:.1f} GiB in float32"):
        placement.plan(PlacementRequest("sequential", "cpu:1KB"), config, torch.float32)


def test_each_process_places_on_its_own_share_of_gpus(monkeypatch):
    """Under `accelerate launch` a strategy uses GPUs k with k % LOCAL_WORLD_SIZE == LOCAL_RANK."""
    gib = 2**30
    monkeypatch.setattr(
        placement, "free_memory", lambda: {0: gib, 1: gib, 2: gib, 3: gib, "cpu": 8 * gib}
    )
    monkeypatch.setattr(placement, "gpu_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    room = placement.budget(None)
    assert set(room) == {1, 3, "cpu"} and room["cpu"] == 4 * gib
    assert room[1] == int(gib * (1 - placement.GPU_HEADROOM))  # room left for activations, caches
    # capped where max_memory says so; another process's GPU in it is not this one's to use
    assert placement.budget("1:100MB;2:100MB") == {1: 10**8, 3: gib, "cpu": 4 * gib}
    config = tiny_qwen2(4, 2).config
    device_map = placement.plan(
        PlacementRequest("balanced", "1:500KB;3:500KB"), config, torch.float32
    )
    assert set(device_map.values()) == {1, 3}  # split over this process's two GPUs, nothing else
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "5")
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ConfigError, match="5 processes on this node share 4 GPUs"):
        placement.budget(None)


# -- a placement that really splits: outputs as the whole model's -----------------------------


def test_llm_split_between_cpu_and_disk_decodes_token_for_token(pair_dir, tmp_path, caplog):
    whole = build_runtime(_config(pair_dir, router="random", p="0.5"))
    want = _decode(whole)
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "cpu",
        "model.layers.3": "disk",
        "model.norm": "cpu",
        "lm_head": "disk",
    }
    with caplog.at_level(logging.INFO, logger="lm_eval_routed.loading.runtime"):
        split = build_runtime(
            _config(
                pair_dir,
                router="random",
                p="0.5",
                llm_device_map=json.dumps(device_map),
                offload_folder=str(tmp_path / "offload"),
            )
        )
    assert any(p.device.type == "meta" for p in split.llm.parameters())  # streamed from disk
    assert _decode(split) == want
    info = split.info()["routed"]
    assert info["engine"] == {"slm": "native", "llm": "hf"}  # native steps aside, saying why:
    aside = [r.message for r in caplog.records if "runs on the hf engine" in r.message]
    assert len(aside) == 1 and "offloads some of its weights" in aside[0]
    assert info["placement"]["llm"] == {
        "devices": {
            "cpu": ["layers 0", "layers 2", "model.embed_tokens", "model.rotary_emb", "model.norm"],
            "disk": ["layers 1", "layers 3", "lm_head"],
        },
        "offloaded_run_on": "cpu",
    }
    assert info["placement"]["slm"] == {"devices": {"cpu": ["all"]}}
    assert split.decoder.llm.device == torch.device("cpu")
    # each layer's KV cache was built on the device the layer ran on
    cache = split.decoder.llm.new_cache(1, 8)
    split.decoder.llm.forward(cache, [0], [0], [[3, 4, 5]])
    assert {k.device for k in cache.keys} == {torch.device("cpu")} and len(cache.keys) == 4


def test_auto_with_a_memory_cap_offloads_the_rest_and_decodes_the_same(pair_dir, tmp_path):
    whole = build_runtime(_config(pair_dir, router="llm-only"))
    size = sum(p.numel() * 4 for p in whole.llm.parameters())
    split = build_runtime(
        _config(
            pair_dir,
            router="llm-only",
            llm_device_map="sequential",
            max_memory=f"cpu:{size // 2}",
            offload_folder=str(tmp_path / "offload"),
        )
    )
    devices = split.info()["routed"]["placement"]["llm"]["devices"]
    assert set(devices) == {"cpu", "disk"}, devices  # half of it fits: a real split
    assert _decode(split) == _decode(whole)
    assert torch.equal(
        split.llm.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=6, do_sample=False),
        whole.llm.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=6, do_sample=False),
    )


def test_native_engine_follows_a_placement_whose_weights_stay_put():
    """Hooks alone (weights resident where they run) no longer send a model to the hf engine."""
    model = tiny_qwen2(3, 5)
    want = make_engine(tiny_qwen2(3, 5), 98, "hf")
    names = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"]
    device_map = {**dict.fromkeys(names, "cpu"), **{f"model.layers.{i}": "cpu" for i in range(3)}}
    dispatch_model(model, device_map=device_map, force_hooks=True)
    assert any(hasattr(m, "_hf_hook") for m in model.modules())
    assert native.unsupported(model) is None
    engine = make_engine(model, 98, "auto")
    assert engine.kind == "native"
    prompts = [[3, 4, 5, 6], [7, 8]]
    got = engine.forward(engine.new_cache(2, 8), [0, 1], [0, 0], prompts).logits
    assert torch.equal(got, want.forward(want.new_cache(2, 8), [0, 1], [0, 0], prompts).logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU beside the CPU")
def test_cuda_and_cpu_layers_run_where_they_sit_on_both_engines():
    """Layers resident on cuda:0 and on the CPU (accelerate's dispatch with the CPU as its main device
    keeps CPU modules resident, not offloaded): each layer's KV cache on its own device, hidden states
    crossing once, logits on the SLM's device, and both engines agreeing with the whole model."""
    want = make_engine(tiny_qwen2(4, 7), 98, "hf")
    model = tiny_qwen2(4, 7)
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0}
    device_map |= {"model.layers.1": 0, "model.layers.2": "cpu", "model.layers.3": "cpu"}
    device_map |= {"model.norm": "cpu", "lm_head": "cpu"}
    dispatch_model(model, device_map=device_map, main_device="cpu")
    prompts = [[3, 4, 5, 6], [7, 8]]
    expected = want.forward(want.new_cache(2, 8), [0, 1], [0, 0], prompts).logits
    for choice in ("hf", "native"):
        engine = make_engine(model, 98, choice, output_device=torch.device("cpu"))
        assert engine.kind == choice and engine.device == torch.device("cuda", 0)
        cache = engine.new_cache(2, 8)
        got = engine.forward(cache, [0, 1], [0, 0], prompts)
        assert got.logits.device.type == "cpu" and got.hidden.device.type == "cpu"
        assert [k.device.type for k in cache.keys] == ["cuda", "cuda", "cpu", "cpu"]
        torch.testing.assert_close(got.logits, expected, rtol=1e-3, atol=1e-3)
        step = engine.forward(cache, [0, 1], [4, 2], [[9], [10]]).logits
        assert step.shape == (2, 98)


def test_an_offloaded_embedding_runs_where_its_hook_says(tmp_path):
    model = tiny_qwen2(2, 5)
    dispatch_model(
        model,
        device_map={"model": "disk", "lm_head": "cpu"},
        offload_dir=str(tmp_path / "off"),
    )
    assert model.model.embed_tokens.weight.device.type == "meta"
    assert execution_device(model, model.model.embed_tokens) == torch.device("cpu")
    assert HFEngine(model, 98).device == torch.device("cpu")


def test_plans_move_once_per_device_and_find_their_way_back():
    engine = make_engine(tiny_qwen2(1, 3), 98, "hf")
    cache = engine.new_cache(2, 16)
    plan = cache.prepare([0, 1], [0, 3], [4, 2], 4)
    moved = plan.to("meta")
    assert moved is not plan and moved.positions.device.type == "meta"
    assert plan.to(torch.device("meta")) is moved  # made once per forward and device
    assert moved.to("cpu") is plan and plan.to("cpu") is plan
    assert all(m.device.type == "meta" for m in moved.masks.values())
    assert moved.spans == plan.spans


@pytest.mark.slow
def test_demo_llm_split_over_cpu_and_disk_matches_the_whole_model(tmp_path):
    """The demo LLM, read into RAM from its package and dispatched with half its layers on disk."""
    layers = {f"model.layers.{i}": "cpu" if i < 15 else "disk" for i in range(30)}
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", **layers}
    device_map |= {"model.norm": "disk", "lm_head": "cpu"}
    common = {"router": "random", "p": "0.3", "cost_slm": "0.01:0.0001", "cost_llm": "0.05:0.001"}
    whole = build_runtime(load_config({"config": "demo", **common}))
    split = build_runtime(
        load_config(
            {
                "config": "demo",
                **common,
                "llm_device_map": json.dumps(device_map),
                "offload_folder": str(tmp_path / "offload"),
            }
        )
    )
    assert split.info()["routed"]["placement"]["llm"]["devices"]["disk"][0] == "layers 15-29"
    assert _decode(split, tokens=8) == _decode(whole, tokens=8)


@pytest.mark.slow
def test_accelerate_launch_places_the_llm_in_each_process(tmp_path):
    """Two processes, each with its own copy of the LLM split over cpu and disk (one offload folder
    given, a folder of its own per process inside it): every doc scored, text as one unsplit run."""
    import subprocess
    import sys
    from pathlib import Path

    from helpers import write_workspace

    root = write_workspace(tmp_path / "ws")
    common = f"slm={root / 'slm'},llm={root / 'llm'},router=random,p=0.5,"
    common += "cost_slm=0.001:0.0001,cost_llm=0.01:0.001"
    placed = f"{common},llm_device_map=model:cpu;lm_head:disk,offload_folder={tmp_path / 'off'}"
    lm_eval = ["-m", "lm_eval", "run", "--model", "routed", "--tasks", "tiny_routed"]
    lm_eval += ["--include_path", str(root / "tasks"), "--log_samples", "--batch_size", "2"]
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--cpu"]
    runs = {
        "placed": [*launch, "--num_processes", "2", *lm_eval, "--model_args", placed],
        "whole": [sys.executable, *lm_eval, "--model_args", common],
    }
    texts = {}
    for name, cmd in runs.items():
        out = tmp_path / name
        proc = subprocess.run(
            [*cmd, "--output_path", str(out)], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(x) for x in next(out.rglob("samples_*.jsonl")).read_text().splitlines()]
        texts[name] = {r["doc_id"]: r["resps"] for r in rows}
        if name == "placed":
            info = json.loads(next(out.rglob("results_*.json")).read_text())
            found = json.dumps(info)
            assert '"disk": ["lm_head"]' in found  # run info says where the layers were
    assert sorted(texts["placed"]) == [0, 1, 2, 3]
    assert texts["placed"] == texts["whole"]
    assert not any((tmp_path / "off").iterdir())  # each process's offload folder went with it


def test_an_engine_over_a_dispatched_model_leaves_it_as_dispatched(tmp_path):
    """The engine's own tree runs through the caller's accelerate hooks (shared, so offloaded weights
    are never copied) while the caller's config, classes and forwards stay as dispatched."""
    want = make_engine(tiny_qwen2(3, 9), 98, "hf")
    model = tiny_qwen2(3, 9)
    names = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head", "model.layers.0"]
    device_map = {**dict.fromkeys(names, "cpu"), "model.layers.1": "disk", "model.layers.2": "disk"}
    dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path / "off"))
    attn = model.config._attn_implementation
    classes = {n: type(m) for n, m in model.named_modules()}
    forwards = {n: m.__dict__.get("forward") for n, m in model.named_modules()}
    hooks = {n: m._hf_hook for n, m in model.named_modules() if hasattr(m, "_hf_hook")}
    engine = make_engine(model, 98, "auto", prepack=True)
    assert engine.kind == "hf" and engine.model is not model
    copied = dict(engine.model.named_modules())
    assert all(copied[n]._hf_hook is hook for n, hook in hooks.items())  # shared, not copied
    prompts = [[3, 4, 5, 6], [7, 8]]
    got = engine.forward(engine.new_cache(2, 8), [0, 1], [0, 0], prompts).logits
    assert torch.equal(got, want.forward(want.new_cache(2, 8), [0, 1], [0, 0], prompts).logits)
    assert model.config._attn_implementation == attn
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert {n: m.__dict__.get("forward") for n, m in model.named_modules()} == forwards
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # still offloaded
    whole = tiny_qwen2(3, 9)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(
        model.generate(ids, max_new_tokens=5, do_sample=False),
        whole.generate(ids, max_new_tokens=5, do_sample=False),
    )
