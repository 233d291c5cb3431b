"""The placement keys a user writes (``llm_device_map``, ``max_memory``, ``offload_folder``), parsed
into accelerate's forms; what they mean and how they are checked against devices: ``placement.py``.

Imports nothing heavy at module level: configs are validated with it before any model library loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_routed.errors import ConfigError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_HELP = "a GPU index or cuda[:N], cpu, mps or disk"

Device = int | str  # accelerate's form: a GPU index, or "cpu", "mps", "disk"


@dataclass(frozen=True)
class PlacementRequest:
    """What a run asks for the LLM: ``llm_device_map``, ``max_memory``, ``offload_folder`` as given."""

    device_map: str
    max_memory: str | None = None
    offload_folder: str | None = None

    @classmethod
    def of(cls, cfg: Any) -> PlacementRequest | None:
        """The request a ``RoutedConfig`` makes, or None when the LLM goes whole onto ``device``."""
        if cfg.llm_device_map is None:
            return None
        return cls(cfg.llm_device_map, cfg.max_memory, cfg.offload_folder)


def check_keys(device_map: str | None, max_memory: str | None, offload_folder: str | None) -> None:
    """The placement keys' syntax, checked when a config is built (devices and sizes: ``plan``)."""
    if device_map is None:
        for key, value in (("max_memory", max_memory), ("offload_folder", offload_folder)):
            if value is not None:
                raise ConfigError(
                    f"{key} applies to the LLM's placement: give llm_device_map too (e.g. auto)"
                )
        return
    parse_device_map(device_map)
    if max_memory is not None:
        parse_max_memory(max_memory)


def as_device(value: Any, key: str) -> Device:
    """One device in accelerate's form; ``key`` names the setting in the error."""
    text = str(value).strip()
    if isinstance(value, int) or text.isdigit():
        return int(text)
    if text == "cuda":  # the process's own GPU, as transformers reads it
        return int(os.environ.get("LOCAL_RANK", "0"))
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    if text in ("cpu", "mps", "disk"):
        return text
    raise ConfigError(f"{key}: {text!r} is not a device; use {DEVICE_HELP}")


def _pairs(text: str, key: str) -> dict[str, str]:
    """A JSON object, a ``.json`` file, or ``name:value;name:value`` (model_args split on commas)."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{key} is not valid JSON ({err.msg} at character {err.pos})"
            ) from None
    elif text.endswith(".json"):
        if not Path(text).is_file():
            raise ConfigError(f"{key}={text!r}: no such file")
        return _pairs(Path(text).read_text().strip(), key)
    else:
        data = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, sep, value = part.rpartition(":") if key == "max_memory" else part.partition(":")
            if not sep or not name.strip() and key == "max_memory":
                raise ConfigError(
                    f"{key}: {part!r} is not name:value; write e.g. "
                    + (
                        "0:20GiB;cpu:64GiB"
                        if key == "max_memory"
                        else "model.layers.0:0;lm_head:cpu"
                    )
                )
            data[name.strip()] = value.strip()
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{key} must map names to values (a JSON object or name:value;...)")
    return {str(k): v for k, v in data.items()}


def parse_device_map(text: str) -> str | dict[str, Device]:
    """A strategy name, or a map of module names (``""``: the whole model) to devices."""
    text = text.strip()
    if text in STRATEGIES:
        return text
    try:  # one device: the whole LLM there
        return {"": as_device(text, "llm_device_map")}
    except ConfigError:
        if not (text.startswith("{") or text.endswith(".json") or ":" in text):
            raise ConfigError(
                f"llm_device_map={text!r}: use {', '.join(STRATEGIES)}, one device ({DEVICE_HELP}), "
                "or a map of modules to devices (JSON, a .json file, or module:device;...)"
            ) from None
    return {
        name: as_device(d, "llm_device_map") for name, d in _pairs(text, "llm_device_map").items()
    }


def parse_max_memory(text: str) -> dict[Device, int]:
    """Bytes per device from ``0:20GiB;cpu:64GiB`` or its JSON form."""
    from accelerate.utils import convert_file_size_to_int

    out: dict[Device, int] = {}
    for name, size in _pairs(text.strip(), "max_memory").items():
        device = as_device(name, "max_memory")
        try:
            text = str(size).strip()
            out[device] = int(text) if text.isdigit() else convert_file_size_to_int(text)
        except ValueError:
            raise ConfigError(
                f"max_memory: {size!r} for {name} is not a size; write e.g. 20GiB, 500MB or bytes"
            ) from None
    return out


def device_name(device: Device) -> str:
    """``cuda:N`` for a GPU index, the name otherwise."""
    return f"cuda:{device}" if isinstance(device, int) else device
