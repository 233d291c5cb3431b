"""Pairs at the papers' shapes (scripts/build_scale_pair.py): configs and a tokenizer on disk, random
weights drawn when loaded (``random:``), and 32B-shaped LLMs placed, or refused, from their config
alone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import char_tokenizer
from transformers import AutoConfig

from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import placement, placement_keys
from lm_eval_routed.loading.models import load_model
from lm_eval_routed.loading.placement_keys import PlacementRequest
from lm_eval_routed.loading.runtime import build_runtime

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scale():
    return _script("build_scale_pair")


@pytest.fixture(scope="module")
def r2r_32b(scale, tmp_path_factory):
    out = tmp_path_factory.mktemp("r2r32b")
    return scale.write_pair(out, "r2r-32b", "bfloat16", tokenizer=char_tokenizer())


def _tiny_pair(scale, root: Path, monkeypatch) -> Path:
    """The ``cpu`` pair's writer over tiny shapes, so its models load in a blink."""
    tiny = (scale.Shape(32, 1, 4, 2, 64, True), scale.Shape(64, 3, 4, 2, 128, False))
    monkeypatch.setitem(scale.PAIRS, "tiny", tiny)
    return scale.write_pair(root, "tiny", "float32", tokenizer=char_tokenizer())


def test_pairs_are_written_as_configs_and_a_tokenizer(r2r_32b):
    spec = yaml.safe_load(r2r_32b.read_text())
    assert spec["dtype"] == "bfloat16"
    slm = AutoConfig.from_pretrained(spec["slm"].removeprefix("random:"))
    llm = AutoConfig.from_pretrained(spec["llm"].removeprefix("random:"))
    # Qwen2.5-1.5B beside Qwen2.5-32B, on the given tokenizer's vocabulary
    assert (slm.hidden_size, slm.num_hidden_layers, slm.intermediate_size) == (1536, 28, 8960)
    assert (llm.hidden_size, llm.num_hidden_layers, llm.intermediate_size) == (5120, 64, 27648)
    assert (llm.num_attention_heads, llm.num_key_value_heads) == (40, 8)
    assert slm.vocab_size == llm.vocab_size == len(char_tokenizer())
    assert slm.random_seed != llm.random_seed
    assert not list(r2r_32b.parent.glob("*/*.safetensors"))  # no weights on disk


def test_random_models_draw_the_same_weights_every_time(scale, tmp_path, monkeypatch):
    spec = yaml.safe_load(_tiny_pair(scale, tmp_path, monkeypatch).read_text())
    a, tok = load_model(spec["llm"], torch.float32, torch.device("cpu"))
    b, _ = load_model(spec["llm"], torch.float32, torch.device("cpu"))
    slm, _ = load_model(spec["slm"], torch.bfloat16, torch.device("cpu"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert slm.dtype == torch.bfloat16 and slm.config.hidden_size == 32
    assert len(tok) == a.config.vocab_size
    with pytest.raises(ConfigError, match="needs a folder with config.json"):
        load_model(f"random:{tmp_path / 'nothing'}", torch.float32, torch.device("cpu"))


def test_a_random_pair_runs_routed_whole_and_split_the_same(scale, tmp_path, monkeypatch):
    pair = _tiny_pair(scale, tmp_path, monkeypatch)
    base = {"config": str(pair), "router": "random", "p": "0.4", "batch_size": 2}
    base |= {"cost_slm": "0.001:0.0001", "cost_llm": "0.01:0.001"}
    whole = build_runtime(load_config(base))
    assert whole.dtype == torch.float32  # the pair's own dtype
    split = build_runtime(
        load_config(
            {
                **base,
                "llm_device_map": "model:cpu;lm_head:disk",
                "offload_folder": str(tmp_path / "off"),
            }
        )
    )
    assert split.info()["routed"]["placement"]["llm"]["devices"]["disk"] == ["lm_head"]
    tok = whole.tokenizer
    outs = []
    for rt in (whole, split):
        rt.decoder.eos_ids = set()
        reqs = [_request(tok, p, i) for i, p in enumerate(["abc", "hello", "x=1"])]
        outs.append([r.token_ids for r in rt.generate(reqs)])
    assert outs[0] == outs[1]


def _request(tok, prompt: str, seed: int):
    from lm_eval_routed.core.rows import GenRequest

    return GenRequest(tok(prompt)["input_ids"], 10, seed=seed)


def test_a_32b_shaped_llm_is_placed_or_refused_from_its_config_alone(r2r_32b, monkeypatch):
    config = AutoConfig.from_pretrained(r2r_32b.parent / "llm")
    monkeypatch.setattr(placement, "gpu_count", lambda: 1)
    monkeypatch.setattr(placement, "free_memory", lambda: {0: 139 * GiB, "cpu": 120 * GiB})
    # one H200: the whole LLM fits on its GPU
    device_map = placement.plan(PlacementRequest("auto"), config, torch.bfloat16)
    assert set(device_map.values()) == {0}
    # capped at 40 GiB of GPU memory: the rest is offloaded to the CPU, the embedding stays on it
    device_map = placement.plan(PlacementRequest("auto", "0:40GiB"), config, torch.bfloat16)
    assert set(device_map.values()) == {0, "cpu"} and device_map["model.embed_tokens"] == 0
    size = sum(p.numel() * 2 for p in placement.empty_model(config, torch.bfloat16).parameters())
    assert 30e9 < size / 2 < 33e9  # a 32B model (on this tokenizer's small vocabulary)
    with pytest.raises(ConfigError, match=f"need {size / GiB:.1f} GiB in bfloat16.*offload_folder"):
        placement.plan(PlacementRequest("auto", "0:20GiB;cpu:20GiB"), config, torch.bfloat16)


def test_split_maps_cover_the_model(tmp_path, monkeypatch):
    scale = _script("build_scale_pair")
    pair = _tiny_pair(scale, tmp_path, monkeypatch)
    check = _script("check_placement")
    device_map = json.loads(check.split_map({"config": str(pair)}, 2, "disk"))
    assert device_map["model.layers.2"] == "disk" and device_map["model.layers.1"] == "cpu"
    assert "model.layers" not in device_map and device_map["lm_head"] == "cpu"
    config = AutoConfig.from_pretrained(tmp_path / "llm")
    request = PlacementRequest(json.dumps(device_map), None, str(tmp_path / "off"))
    assert placement.plan(request, config, torch.float32) == {
        k: placement_keys.parse_device_map(json.dumps(device_map))[k] for k in device_map
    }
