"""Router checkpoints: our folder format (model.safetensors + config.json) and the authors' files.

A folder holds ``config.json`` (router kind, architecture sizes, SLM id and hidden size, vocabulary size,
threshold and how it was chosen, training-data fingerprint, metrics) beside ``model.safetensors``.
R2R's official ``.pt`` files are dicts ``{model_type, init_args, common_args{threshold, ...},
model_specific_args, state_dict}``; CITER's ``mlp_iter_*.pth`` files are bare state dicts (no sizes, no
threshold). Both are read with ``torch.load(weights_only=True)`` only, so no arbitrary object is ever
unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import save_atomic, write_atomic
from lm_eval_routed.paths import router_ckpts_dir


def resolve(ref: str | None, kind: str) -> Path:
    """A checkpoint path: as given, or a folder name under the shipped router_ckpts/."""
    if not ref:
        raise ConfigError(
            f"router={kind} needs router_ckpt=FOLDER (a router_ckpts/<name>/ folder or a .pt)"
        )
    for path in (Path(ref), router_ckpts_dir() / ref):
        if path.exists():
            return path
    raise ConfigError(
        f"router_ckpt={ref!r} not found (looked as a path and under {router_ckpts_dir()})"
    )


# (config, state_dict, file holding the weights)
Loaded = tuple[dict[str, Any], dict[str, torch.Tensor], Path]


def check(
    ref: str | None,
    kind: str,
    build: Callable[[dict[str, Any]], torch.nn.Module] | None = None,
    ignore: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A checkpoint's config, refused when missing, not of ``kind``, unreadable or not fitting.

    A folder's tensors are not read, only the safetensors header; ``build(config)``, if given, makes
    the router network the config describes (on the meta device, so nothing is allocated) and each
    tensor of the file must have its shape. Keys in ``ignore`` may be in the file and not the net.
    """
    path = resolve(ref, kind)
    if path.is_dir():
        cfg, weights = _folder_config(path, kind), path / "model.safetensors"
        shapes = safetensors_shapes(weights, f"{kind} router")
    else:  # an official .pt holds its kind beside its tensors
        cfg, state, weights = load(ref, kind)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    if build is not None:
        _check_shapes(weights, _built(build, cfg, weights, kind), shapes, kind, ignore)
    return cfg


def check_threshold(threshold: float | None, kind: str) -> None:
    """A probability threshold (the routers' sigmoid outputs) must lie in [0, 1]."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(
            f"threshold={threshold:g} is out of range for router={kind}, which compares a "
            "probability: give a value between 0 and 1"
        )


def load(ref: str | None, kind: str) -> Loaded:
    """(config, state_dict, file holding the weights) of a router checkpoint of ``kind``."""
    path = resolve(ref, kind)
    if path.is_dir():
        weights = path / "model.safetensors"
        config = _folder_config(path, kind)
        safetensors_shapes(weights, f"{kind} router")  # a damaged file: one line, not Rust's error
        return config, load_file(weights), weights
    raw = _torch_load(path)
    if kind == "citer":
        state = _tensors(raw, path)  # CITER's files say neither their sizes nor a threshold
        return {"kind": "citer", "threshold_rule": "official checkpoint"}, state, path
    cfg = _fields_ok(_of_kind(_r2r_official(raw, path), path, kind), path)
    return cfg, cfg.pop("state_dict"), path


def _folder_config(path: Path, kind: str) -> dict[str, Any]:
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    for needed in (cfg_file, weights):
        if needed.is_dir():
            raise ConfigError(f"{needed} is a folder, not a file; restore the checkpoint's file")
        if not needed.is_file():
            raise ConfigError(
                f"{path} has no {needed.name}; a router checkpoint folder holds config.json and "
                "model.safetensors"
            )
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{cfg_file} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "restore the file its training run wrote"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {cfg_file}: {err}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{cfg_file} must hold a JSON object (kind, hidden_size, threshold, ...)")
    return _fields_ok(_of_kind(cfg, cfg_file, kind), cfg_file)


def _of_kind(cfg: dict[str, Any], path: Path, kind: str) -> dict[str, Any]:
    if "kind" not in cfg:
        raise ConfigError(f'{path} records no router kind; expected "kind": "{kind}"')
    if cfg.get("kind") != kind:
        raise ConfigError(f"{path} is a {cfg.get('kind')!r} router checkpoint, not {kind!r}")
    return cfg


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _fields_ok(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """The fields every router reads from its config, checked for type and range (a missing size
    is reported by the router's own build, which knows which sizes its layout needs)."""
    hidden_key = "hidden_states_size" if "hidden_states_size" in cfg else "hidden_size"
    if hidden_key in cfg and not _positive_int(cfg[hidden_key]):
        raise ConfigError(
            f"{where}: {hidden_key}={cfg.get(hidden_key)!r} must be a positive integer "
            "(the SLM's hidden size)"
        )
    vocab = cfg.get("vocab_size")
    if vocab is not None and not _positive_int(vocab):
        raise ConfigError(f"{where}: vocab_size={vocab!r} must be a positive integer")
    threshold = cfg.get("threshold")
    number = isinstance(threshold, int | float) and not isinstance(threshold, bool)
    if threshold is not None and not (number and 0.0 <= threshold <= 1.0):
        raise ConfigError(
            f"{where}: threshold={threshold!r} must be a number between 0 and 1; "
            "fix it there or pass threshold="
        )
    return cfg


def safetensors_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header; a damaged file is one line."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{path} is not a readable safetensors file ({first}); restore or re-download "
            f"the {what}'s weights"
        ) from None


def _built(
    build: Callable[[dict[str, Any]], torch.nn.Module], cfg: dict[str, Any], where: Path, kind: str
) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the net ``cfg`` describes, built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            net = build(cfg)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise ConfigError(
            f"{where}: its sizes do not make a {kind} router ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); restore the config it was trained with"
        ) from None
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _check_shapes(
    weights: Path,
    want: dict[str, tuple[int, ...]],
    have: dict[str, tuple[int, ...]],
    kind: str,
    ignore: tuple[str, ...],
) -> None:
    have = {k: v for k, v in have.items() if k not in ignore}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise ConfigError(
            f"{weights} does not fit the {kind} router its config describes: missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}; use the weights saved with that config"
        )
    for key, shape in want.items():
        if have[key] != shape:
            raise ConfigError(
                f"{weights}: tensor {key} has shape {list(have[key])} but the config's sizes "
                f"need {list(shape)}; use the weights saved with that config"
            )


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling refusal is a user-facing file problem)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path} is not a weights-only torch checkpoint: {first}") from None


def _tensors(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """A bare state dict (names to tensors), or a one-line refusal."""
    if isinstance(raw, dict) and "model_type" in raw and "state_dict" in raw:
        raise ConfigError(f"{path} is an R2R router dict, not a CITER state dict; use router=r2r")
    if not (
        isinstance(raw, dict)
        and raw
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items())
    ):
        raise ConfigError(
            f"{path} is not a state dict of tensors (expected CITER's mlp_iter_*.pth layout)"
        )
    return dict(raw)


def _r2r_official(raw: Any, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ConfigError(
            f"{path} is not an R2R router dict (expected keys model_type, init_args, state_dict)"
        )
    common = raw.get("common_args") or {}
    return {
        "kind": "r2r",
        **(raw.get("init_args") or {}),
        "threshold": common.get("threshold"),
        "threshold_rule": "official checkpoint",
        "official_model_type": raw.get("model_type"),
        "state_dict": raw["state_dict"],
    }


def save(folder: Path, module: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write ``module``'s weights and ``config`` as a checkpoint folder."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_atomic(folder / "model.safetensors", lambda tmp: save_file(state, tmp))
    write_config(folder, config)


def write_config(folder: Path, config: dict[str, Any]) -> None:
    """Write a checkpoint's ``config.json`` (sorted keys, so rebuilt checkpoints compare byte for byte)."""
    write_atomic(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_fits(cfg: dict[str, Any], slm: torch.nn.Module, kind: str) -> None:
    """The checkpoint's SLM hidden size (and vocabulary, when recorded) must match the SLM in use."""
    hidden = slm.config.hidden_size
    if cfg.get("hidden_size") != hidden:
        raise ConfigError(
            f"{kind} checkpoint was trained for SLM hidden size {cfg.get('hidden_size')}, "
            f"but slm has {hidden}; use a router trained for this SLM"
        )
    vocab = slm.get_input_embeddings().weight.shape[0]
    if cfg.get("vocab_size") not in (None, vocab):
        raise ConfigError(
            f"{kind} checkpoint expects vocabulary {cfg['vocab_size']}, slm has {vocab}"
        )
