"""From what a user types to a RoutedConfig: model_args strings, YAML files and presets, each key
coerced to its field's type and refused in one line when it cannot be (``load_config``)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"

log = logging.getLogger(__name__)

_FIELDS = {f.name: f for f in fields(RoutedConfig) if f.name != "extra"}


def _coerce(key: str, raw: Any) -> Any:
    """Turn a model_args string (or YAML value) into the field's type, or raise ConfigError."""
    kind = str(_FIELDS[key].type)
    # a YAML mapping (llm_device_map, max_memory) is kept as its JSON text
    if isinstance(raw, dict) and kind.startswith("str"):
        return json.dumps(raw)
    if isinstance(raw, str) and not raw.strip():
        raise ConfigError(f"{key}= is empty; give it a value or leave {key} out")
    if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
        if "None" in kind:
            return None
        raise ConfigError(f"{key} needs a value")
    try:
        if kind.startswith("tuple"):
            parts = raw if isinstance(raw, list | tuple) else str(raw).replace(":", " ").split()
            if len(parts) != 2:
                raise ValueError
            pair = (float(parts[0]), float(parts[1]))
            if not all(map(math.isfinite, pair)):
                raise ConfigError(
                    f"{key}={raw!r}: both seconds must be finite numbers "
                    "(fixed_s:per_token_s, e.g. 0.03:0.001; leave it out to measure)"
                )
            return pair
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes"):
                return True
            if str(raw).lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if kind.startswith("int"):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if kind.startswith("float"):
            if isinstance(raw, bool):
                raise ValueError
            number = float(raw)
            if not math.isfinite(number):
                raise ConfigError(f"{key}={raw!r} is not a finite number")
            return number
        return str(raw)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        want = kind.replace(" | None", "")
        hint = " (two numbers: fixed_s:per_token_s)" if want.startswith("tuple") else ""
        raise ConfigError(f"{key}={raw!r} is not a valid {want}{hint}") from None


def preset_names() -> list[str]:
    """Names of the shipped presets (``config=NAME``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(ref: str) -> dict[str, Any]:
    path = Path(ref).expanduser()
    if path.is_dir():
        raise ConfigError(f"config={ref!r} is a folder; give the YAML file itself or a preset name")
    if not path.is_file():
        if path.suffix in (".yaml", ".yml") or "/" in ref:  # meant as a file, not a preset name
            raise ConfigError(f"config={ref!r}: no such file; fix the path")
        path = PRESETS_DIR / f"{ref}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"config={ref!r} is neither a YAML file nor a preset; presets: {', '.join(preset_names())}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"config file {path} is not valid YAML{where}: {problem}; fix that line"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    if data is None:
        raise ConfigError(
            f"config file {path} is empty; write its keys (router: ..., slm: ...) or drop config="
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def load_config(args: dict[str, Any] | None = None, **overrides: Any) -> RoutedConfig:
    """Build a config from ``config=`` (file or preset) plus explicit keys, which win.

    A router knob (``threshold``, ``p``, ...) given explicitly to a router that does not read it,
    at a value other than its default, is refused; one the ``config=`` file sets for its own router
    is dropped when another router is chosen.
    """
    from lm_eval_routed.routers.base import knob_names, knobs_of

    args = {**(args or {}), **overrides}
    from_file = _read_yaml(str(args["config"])) if args.get("config") else {}
    given = {k: v for k, v in args.items() if k != "config"}
    merged = {**from_file, **given}
    router = str(merged.get("router") or RoutedConfig.router)
    reads = knobs_of(router)
    knobs = knob_names()
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, raw in merged.items():
        if key in knobs and key not in reads:
            if key in given and _coerce_known(key, raw) not in (None, _default(key)):
                raise ConfigError(_unread(key, raw, router, reads))
            log.info("router=%s does not read %s; dropped", router, key)
            continue
        if key in _FIELDS:
            values[key] = _coerce(key, raw)
        elif key in knobs:
            extra[key] = raw
        else:
            allowed = ", ".join([*_FIELDS, *sorted(knobs - set(_FIELDS)), "config"])
            raise ConfigError(f"unknown key {key!r}; allowed keys: {allowed}")
    return RoutedConfig(**values, extra=extra)


def _coerce_known(key: str, raw: Any) -> Any:
    """``raw`` as its field's type (a router's own extra key is taken as given)."""
    return _coerce(key, raw) if key in _FIELDS else raw


def _default(key: str) -> Any:
    """A field's default (None for a router's own extra key)."""
    return _FIELDS[key].default if key in _FIELDS else None


def _unread(key: str, raw: Any, router: str, reads: tuple[str, ...]) -> str:
    """The one line refusing a knob ``router`` does not read."""
    from lm_eval_routed.routers.base import readers_of

    what = f"reads only {', '.join(reads)}" if reads else "reads no knob"
    return (
        f"{key}={raw} is not read by router={router}, which {what}; drop {key} or choose "
        f"a router that reads it ({', '.join(readers_of(key))})"
    )


def parse_arg_string(text: str) -> dict[str, str]:
    """Parse lm-eval's ``k=v,k=v`` form (used for ``ROUTED_MODEL_ARGS`` too)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(
                f"model arg {part!r} has no '='; write key=value pairs separated by commas"
            )
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def given_keys(args: dict[str, Any]) -> set[str]:
    """The keys a user set: those of ``args`` and of the config file or preset ``config=`` names."""
    keys = set(args) - {"config"}
    if args.get("config"):
        keys |= set(_read_yaml(str(args["config"])))
    return keys
