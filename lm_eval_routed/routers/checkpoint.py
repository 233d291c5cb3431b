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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lm_eval_routed.config import ConfigError
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


def check(ref: str | None, kind: str) -> None:
    """Refuse a checkpoint that is missing or not of ``kind``; a folder's tensors are not read."""
    path = resolve(ref, kind)
    if path.is_dir():
        _folder_config(path, kind)
    else:
        load(ref, kind)  # an official file's kind shows in its contents


def load(ref: str | None, kind: str) -> Loaded:
    """(config, state_dict, file holding the weights) of a router checkpoint of ``kind``."""
    path = resolve(ref, kind)
    if path.is_dir():
        weights = path / "model.safetensors"
        return _folder_config(path, kind), load_file(weights), weights
    raw = _torch_load(path)
    if kind == "citer":
        state = _tensors(raw, path)  # CITER's files say neither their sizes nor a threshold
        return {"kind": "citer", "threshold_rule": "official checkpoint"}, state, path
    cfg = _of_kind(_r2r_official(raw, path), path, kind)
    return cfg, cfg.pop("state_dict"), path


def _folder_config(path: Path, kind: str) -> dict[str, Any]:
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not (cfg_file.is_file() and weights.is_file()):
        raise ConfigError(f"{path} must hold config.json and model.safetensors")
    return _of_kind(json.loads(cfg_file.read_text()), path, kind)


def _of_kind(cfg: dict[str, Any], path: Path, kind: str) -> dict[str, Any]:
    if cfg.get("kind") != kind:
        raise ConfigError(f"{path} is a {cfg.get('kind')!r} router checkpoint, not {kind!r}")
    return cfg


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling refusal is a user-facing file problem)
        raise ConfigError(
            f"{path} is not a weights-only torch checkpoint: {str(err).splitlines()[0]}"
        ) from None


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
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    write_config(folder, config)


def write_config(folder: Path, config: dict[str, Any]) -> None:
    """Write a checkpoint's ``config.json`` (sorted keys, so rebuilt checkpoints compare byte for byte)."""
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


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
