"""Load a causal LM and its tokenizer (hub id, local folder, GGUF file, or the demo pair); count params."""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.placement import dispatch, offload_dir, plan, removes_offload
from lm_eval_routed.loading.placement_keys import PlacementRequest, device_name

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device={name!r} is not supported; use auto, cpu, cuda[:N] or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is visible; use device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
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
        from lm_eval_routed.loading import demo_pair

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
    preflight(ref)
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
    except (OSError, ValueError, RuntimeError, SafetensorError, struct.error, EOFError) as err:
        # a missing or damaged file (a GGUF cut short is a struct.error), a config.json that is not
        # JSON, tensors that do not fit it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
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


def preflight(ref: str) -> None:
    """Refuse what a local model folder shows before any weight loads: a config.json that is not
    JSON, a safetensors file whose header is damaged or whose data is cut short."""
    folder = Path(ref)
    if ref.startswith("demo:") or not folder.is_dir():
        return  # hub ids and GGUF files are checked as they load
    config = folder / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"{config} is not valid JSON ({err}); restore or re-download the model"
            ) from None
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"{weights} is not a readable safetensors file ({first}); restore or "
                f"re-download model {ref!r}"
            ) from None


def tokenizer_size(tokenizer) -> int:
    """How many token ids ``tokenizer`` can produce (its largest id + 1, added tokens included)."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def check_vocab_fits(model: torch.nn.Module, tokenizer, ref: str, role: str) -> None:
    """Every id the shared tokenizer produces needs a row in the model's embedding and LM head."""
    need = tokenizer_size(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    head = model.get_output_embeddings()
    if head is not None:
        rows = min(rows, head.weight.shape[0])
    if rows < need:
        raise ConfigError(
            f"{role}={ref!r} has {rows} embedding rows but the shared tokenizer has {need} token "
            f"ids, so rare tokens would index past its embedding; use a {role} built for this "
            "tokenizer (same vocabulary size or larger)"
        )


def config_vocab_size(ref: str, trust_remote_code: bool = False) -> int | None:
    """A model's vocabulary size from its config alone (None where that cannot be read cheaply)."""
    if ref.startswith("demo:") or ref.endswith(".gguf"):
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None  # the load itself reports it in one line
    size = getattr(config.get_text_config(), "vocab_size", None)
    return size if isinstance(size, int) else None


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


def load_pair_model(ref: str, dtype: str, device: str):
    """(model, tokenizer) through the project's loader, with ``auto`` dtype and device resolved."""
    dev = resolve_device(device)
    return load_model(ref, resolve_dtype(dtype, dev), dev)
