"""Load a causal LM and its tokenizer (hub id, local folder, GGUF file, or the demo pair); count params."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lm_eval_routed.config import ConfigError
from lm_eval_routed.placement import dispatch, offload_dir, plan, removes_offload
from lm_eval_routed.placement_keys import PlacementRequest, device_name

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is visible; use device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} but MPS is not available; use device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU (fidelity), bfloat16 on accelerators."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return _DTYPES[name]


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of one model: all of them, and without the (input/output) embeddings."""

    total: int
    non_embedding: int


def count_params(model: torch.nn.Module) -> ParamCount:
    """Count unique parameters; embeddings are the input embedding and an untied LM head."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embed_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    if head is not None:
        embed_ids |= {id(p) for p in head.parameters()}
    embedding = sum(unique[i].numel() for i in embed_ids if i in unique)
    return ParamCount(total=total, non_embedding=total - embedding)


def load_model(
    ref: str,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool = False,
    placement: PlacementRequest | None = None,
):
    """Load ``(model, tokenizer)`` from a hub id, a local folder, ``path/file.gguf``, ``demo:slm|llm``
    or ``random:folder`` (random weights: ``_load_random``);
    on ``device``, or spread as ``placement`` asks (``placement.py``: checked before weights load)."""
    if ref.startswith("demo:"):
        from lm_eval_routed import demo_pair

        loaders = {"demo:llm": demo_pair.load_demo_llm, "demo:slm": demo_pair.load_demo_slm}
        if ref not in loaders:
            raise ConfigError(f"unknown demo model {ref!r}; use demo:slm or demo:llm")
        if placement is None:
            model, tok = loaders[ref](dtype, device)
        else:  # read into RAM from the package, then placed
            model, tok = loaders[ref](dtype, torch.device("cpu"))
            model = dispatch(model.eval(), placement)
    elif ref.startswith("random:"):
        model, tok = _load_random(Path(ref.removeprefix("random:")), dtype, device, placement)
    else:
        model, tok = _load_hf(ref, dtype, device, trust_remote_code, placement)
    model.eval().requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _load_hf(
    ref: str,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
    placement: PlacementRequest | None = None,
):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"trust_remote_code": trust_remote_code}
    source = ref
    if ref.endswith(".gguf"):
        path = Path(ref)
        if not path.is_file():
            raise ConfigError(f"GGUF file {ref!r} does not exist; give path/to/model.gguf")
        source, kwargs["gguf_file"] = str(path.parent), path.name
    elif Path(ref).exists() and not (Path(ref) / "config.json").is_file():
        raise ConfigError(
            f"{ref!r} is a path without config.json; give a model folder or a .gguf file"
        )
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        offload = None
        if placement is not None:  # resolved and checked on the config, before any weight loads
            device_map = plan(placement, AutoConfig.from_pretrained(source, **kwargs), dtype)
            offload = offload_dir(placement, device_map)
            kwargs.update(device_map=device_map, offload_folder=offload)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation="sdpa", **kwargs
        )
    except OSError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"cannot load model {ref!r}: {first}") from None
    if placement is None:
        return model.to(device), tok
    return removes_offload(model, offload), tok


def _load_random(
    folder: Path, dtype: torch.dtype, device: torch.device, placement: PlacementRequest | None
):
    """The model ``folder``'s config describes, its weights drawn on the spot (seeded by the
    config's ``random_seed``) where they will live, and the folder's tokenizer: a stand-in of any
    size for speed measurements (``scripts/build_scale_pair.py``) that needs no weights on disk."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"random:{folder} needs a folder with config.json and a tokenizer "
            "(scripts/build_scale_pair.py writes them)"
        )
    config = AutoConfig.from_pretrained(folder)
    device_map = None if placement is None else plan(placement, config, dtype)
    devices = set((device_map or {"": device}).values())
    # drawn on its one device, else on the CPU and dispatched from there
    only = device_name(devices.pop()) if len(devices) == 1 else "cpu"
    home = torch.device("cpu" if only == "disk" else only)
    torch.manual_seed(getattr(config, "random_seed", 0))
    with home:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if device_map is not None:
        model = dispatch(model, placement, device_map)
    return model, AutoTokenizer.from_pretrained(folder)


def check_same_vocab(slm_tok, llm_tok, slm_ref: str, llm_ref: str) -> None:
    """Token-level routing needs one vocabulary: a mismatch is a configuration error."""
    if slm_tok.get_vocab() != llm_tok.get_vocab():
        raise ConfigError(
            f"slm={slm_ref!r} and llm={llm_ref!r} use different vocabularies; "
            "token-level routing needs two models of the same tokenizer"
        )


def eos_ids(tokenizer, model) -> set[int]:
    """Token ids that end a response for this model."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids


def cache_kwarg(model: torch.nn.Module) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` (transformers >= 5.24, which
    deprecates the old name) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def load_pair_model(ref: str, dtype: str, device: str):
    """(model, tokenizer) through the project's loader, with ``auto`` dtype and device resolved."""
    dev = resolve_device(device)
    return load_model(ref, resolve_dtype(dtype, dev), dev)
