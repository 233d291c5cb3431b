"""Files a user hands in, broken the ways people break them: a config YAML (``config=``), a router
checkpoint folder, a model folder. Each variant (missing key, wrong type, unparseable value, empty
file, a path that does not exist, a folder where a file belongs) gets one line naming the file and
what is wrong, before any weight loads, with nothing on disk changed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import char_tokenizer, one_line, tiny_llama, tree, write_workspace

from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import runtime
from lm_eval_routed.paths import router_ckpts_dir

# -- config YAML (config=FILE, EvalPlus's --model, a matrix's config:) -----------------------------


def _write(path, content) -> None:
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "config='{path}': no such file; fix the path"),
        ("folder", "config='{path}' is a folder; give the YAML file itself"),
        ("", "config file {path} is empty; write its keys"),
        ("# only a comment\n", "config file {path} is empty"),
        (b"\xff\xfe\x00router", "cannot read config file {path}"),
        ("router: entropy\nthreshold: [0.1\n", "is not valid YAML at line 3"),
        ("router: entropy\n  threshold: 0.1\n", "is not valid YAML at line 2"),
        ("router: 'entropy\n", "is not valid YAML"),
        ("- router\n- entropy\n", "config file {path} must hold a mapping of keys to values"),
        ("router: entropy\nthreshhold: 0.1\n", "unknown key 'threshhold'; allowed keys: slm,"),
        ("router: entropy\nthreshold: high\n", "threshold='high' is not a valid float"),
        ("batch_size: [1, 2]\n", "batch_size=[1, 2] is not a valid int"),
        ("router: [entropy]\n", "unknown router \"['entropy']\"; choose one of:"),
        ("router: random\np: .nan\n", "p=nan is not a finite number"),
        ("router: random\np:\n", "p needs a value"),
    ],
)
def test_config_file_mistakes_are_one_line(tmp_path, content, needle):
    path = tmp_path / "run.yaml"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        _write(path, content)
    before = tree(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config({"config": str(path)})
    one_line(err, needle.format(path=path))
    assert tree(tmp_path) == before


def test_a_config_name_that_is_neither_file_nor_preset():
    with pytest.raises(ConfigError) as err:
        load_config({"config": "rstich"})
    one_line(err, "config='rstich' is neither a YAML file nor a preset; presets: citer, demo")


def test_a_files_unread_knob_is_dropped_not_refused(tmp_path):
    (tmp_path / "run.yaml").write_text("router: random\nthreshold: 0.3\n")
    assert load_config({"config": str(tmp_path / "run.yaml")}).threshold is None


# -- router checkpoint files ----------------------------------------------------------------------


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    for key, value in changes.items():
        if value is None:
            del cfg[key]
    (folder / "config.json").write_text(json.dumps(cfg))


def _cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def _as_folder(path):
    path.unlink()
    path.mkdir()


W, C = "model.safetensors", "config.json"
# damage -> (what it does to a copy of a shipped checkpoint folder, the line it gets)
DAMAGE = {
    "truncate": (lambda f: _cut(f / W, (f / W).stat().st_size // 2), f"{W} is not a readable"),
    "garbage": (lambda f: (f / W).write_bytes(b"not a tensor file" * 40), f"{W} is not a readable"),
    "empty": (lambda f: (f / W).write_bytes(b""), f"{W} is not a readable safetensors file"),
    "no_weights": (lambda f: (f / W).unlink(), f"has no {W}; a router checkpoint folder holds"),
    "weights_dir": (lambda f: _as_folder(f / W), f"{W} is a folder, not a file"),
    "no_config": (lambda f: (f / C).unlink(), f"has no {C}; a router checkpoint folder holds"),
    "config_dir": (lambda f: _as_folder(f / C), f"{C} is a folder, not a file"),
    "config_empty": (lambda f: (f / C).write_text(""), f"{C} is not valid JSON (line 1, column 1"),
    "json_syntax": (lambda f: (f / C).write_text('{"kind": "x",,}'), f"{C} is not valid JSON (li"),
    "json_list": (lambda f: (f / C).write_text("[1, 2]"), f"{C} must hold a JSON object"),
    "no_kind": (lambda f: _edit_config(f, kind=None), "records no router kind"),
    "kind_number": (lambda f: _edit_config(f, kind=5), "is a 5 router checkpoint, not"),
    "hidden_text": (lambda f: _edit_config(f, hidden_size="abc"), "hidden_size='abc' must be a"),
    "hidden_wrong": (lambda f: _edit_config(f, hidden_size=64), "but the config's sizes need"),
    "hidden_missing": (lambda f: _edit_config(f, hidden_size=None), "its sizes do not make a"),
    "threshold_out": (lambda f: _edit_config(f, threshold=7), "threshold=7 must be a number betw"),
    "threshold_text": (lambda f: _edit_config(f, threshold="high"), "threshold='high' must be a"),
    "vocab_text": (lambda f: _edit_config(f, vocab_size=-3), "vocab_size=-3 must be a positive"),
}


@pytest.mark.parametrize("kind", ["citer", "r2r"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_router_files_are_refused_before_loading(tmp_path, no_loading, kind, damage):
    folder = tmp_path / f"my-{kind}"
    shutil.copytree(router_ckpts_dir() / f"demo-{kind}", folder)
    harm, needle = DAMAGE[damage]
    harm(folder)
    cfg = load_config({"router": kind, "router_ckpt": str(folder)})
    before = tree(tmp_path)
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(cfg)
    one_line(err, needle)
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "ref,needle",
    [
        ("nope", "router_ckpt='nope' not found (looked as a path and under"),
        ("notes.txt", "notes.txt is not a weights-only torch checkpoint"),
        ("empty.pt", "empty.pt is not a weights-only torch checkpoint"),
    ],
)
def test_a_router_ckpt_that_is_not_a_checkpoint(tmp_path, monkeypatch, no_loading, ref, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my router is in the other folder\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    before = tree(tmp_path)
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(load_config({"router": "r2r", "router_ckpt": ref}))
    one_line(err, needle)
    assert tree(tmp_path) == before


def test_an_official_r2r_file_that_is_not_a_torch_checkpoint(tmp_path, no_loading):
    (tmp_path / "router.pt").write_bytes(b"PK\x03\x04 not really a zip")
    cfg = load_config({"router": "r2r", "router_ckpt": str(tmp_path / "router.pt")})
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(cfg)
    one_line(err, "is not a weights-only torch checkpoint")


def test_an_official_r2r_file_is_checked_against_its_init_args(tmp_path, no_loading):
    from lm_eval_routed.routers.base import check_router
    from lm_eval_routed.routers.r2r import OFFICIAL_TYPE, OfficialR2RNet

    init = {"hidden_states_size": 64, "logits_size": 10, "hidden_dims": [16, 32, 16]}
    state = OfficialR2RNet(**init).state_dict()

    def saved(init_args: dict, tensors: dict):
        ckpt = {"model_type": OFFICIAL_TYPE, "init_args": init_args, "state_dict": tensors}
        torch.save({**ckpt, "common_args": {"threshold": 0.3}}, tmp_path / "r.pt")
        return load_config({"router": "r2r", "router_ckpt": str(tmp_path / "r.pt")})

    check_router(saved(init, {**state, "token_embeddings.weight": torch.zeros(98, 64)}))  # fits
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(saved({**init, "logits_size": 12}, state))
    one_line(err, "tensor logits_projection.weight has shape [64, 10] but the config's sizes need")
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(saved({**init, "hidden_states_size": "wide"}, state))
    one_line(err, "hidden_states_size='wide' must be a positive integer")


# -- model files and vocabularies -----------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("bad_files"))


@pytest.fixture
def loads(monkeypatch):
    """The refs ``build_runtime`` loads, in order (the real loader still runs)."""
    seen: list[str] = []
    real = runtime.load_model

    def record(ref, *a, **k):
        seen.append(ref)
        return real(ref, *a, **k)

    monkeypatch.setattr(runtime, "load_model", record)
    return seen


def _pair_args(slm, llm) -> dict:
    return {"slm": str(slm), "llm": str(llm), "cost_slm": "0:0", "cost_llm": "0:0"}


@pytest.mark.parametrize("role", ["slm", "llm"])
@pytest.mark.parametrize(
    "damage,needle",
    [
        ("truncate", "model.safetensors is not a readable safetensors file"),
        ("garbage", "model.safetensors is not a readable safetensors file"),
        ("config_json", "config.json is not valid JSON"),
    ],
)
def test_a_damaged_model_folder_is_refused_before_any_weight_loads(
    workspace, tmp_path, no_loading, role, damage, needle
):
    bad = tmp_path / role
    shutil.copytree(workspace / role, bad)
    weights = bad / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    else:
        (bad / "config.json").write_text('{"model_type": "llama",')
    pair = {"slm": workspace / "slm", "llm": workspace / "llm", role: bad}
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(load_config(_pair_args(pair["slm"], pair["llm"])))
    one_line(err, needle)


def test_a_damaged_model_file_loaded_directly_is_one_line(workspace, tmp_path):
    from lm_eval_routed.loading.models import load_model

    bad = tmp_path / "m"
    shutil.copytree(workspace / "slm", bad)
    (bad / "model.safetensors").write_bytes(b"{}")
    with pytest.raises(ConfigError) as err:
        load_model(str(bad), torch.float32, torch.device("cpu"))
    one_line(err, "is not a readable safetensors file")


@pytest.mark.parametrize(
    "content", [b"GGUF\x03\x00\x00\x00cut short", b"not a gguf file at all, just text" * 4]
)
def test_a_damaged_gguf_file_is_one_line(tmp_path, content):
    from lm_eval_routed.loading.models import load_model

    (tmp_path / "m.gguf").write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_model(str(tmp_path / "m.gguf"), torch.float32, torch.device("cpu"))
    one_line(err, "cannot load model")


def _saved(folder, vocab: int):
    tiny_llama(1, seed=5, vocab=vocab).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def test_an_slm_whose_embedding_is_smaller_than_the_tokenizer(workspace, tmp_path, loads):
    small = _saved(tmp_path / "small", vocab=90)  # the tokenizer has 98 ids
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(load_config(_pair_args(small, workspace / "llm")))
    one_line(err, "slm=")
    one_line(err, "has 90 embedding rows but the shared tokenizer has 98 token ids")
    assert loads == [str(small)]  # refused before the LLM loads


def test_an_llm_whose_vocabulary_is_smaller_is_refused_before_it_loads(workspace, tmp_path, loads):
    small = _saved(tmp_path / "small", vocab=97)
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(load_config(_pair_args(workspace / "slm", small)))
    one_line(err, "has a vocabulary of 97 but the shared tokenizer has 98 token ids")
    assert loads == [str(workspace / "slm")]


def test_models_handed_in_are_checked_against_the_tokenizer(pair, tokenizer):
    cfg = load_config({"cost_slm": "0:0", "cost_llm": "0:0"})
    with pytest.raises(ConfigError) as err:
        runtime.build_runtime(
            cfg, slm=tiny_llama(1, seed=3, vocab=50), llm=pair[1], tokenizer=tokenizer
        )
    one_line(err, "has 50 embedding rows")
    larger = tiny_llama(1, seed=3, vocab=128)  # padded embeddings (Qwen-style) are fine
    assert runtime.build_runtime(cfg, slm=larger, llm=pair[1], tokenizer=tokenizer).slm is larger
