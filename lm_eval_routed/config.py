"""RoutedConfig: the one description of a routed run, from YAML, a preset name, or lm-eval model_args.

Every user-facing form (``--model_args k=v,...``, ``config=demo``, a YAML file, ``ROUTED_MODEL_ARGS``)
ends here, is validated once, and fails with one line naming the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("pause", "lockstep")
ENGINES = ("auto", "native", "hf")
DEVICE_FORM = re.compile(r"(cpu|mps|cuda)(:\d+)?")

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A user-facing configuration mistake; its message is one line that says how to fix it."""


@dataclass(frozen=True)
class RoutedConfig:
    """Everything a routed run needs. Field docs are the README's model_args table."""

    slm: str = "demo:slm"
    llm: str = "demo:llm"
    router: str = "slm-only"
    threshold: float | None = None  # router's own default when None
    p: float = 0.1  # random router: LLM rate
    router_ckpt: str | None = None
    gamma: int = 4  # speculative: draft length
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    slm_dtype: str | None = None  # the SLM's own dtype; None = dtype
    device: str = "auto"  # auto: cuda if available else cpu
    batch_size: int = 1
    max_length: int | None = None  # prompt + generation budget; default: the LLM's context size
    max_gen_toks: int = 256
    llm_min_batch: int = 0  # LLM forward once this many rows wait; 0 = from the costs (schedule.py)
    guess_ahead: int = 0  # per-token, greedy: tokens a routed row decodes on the SLM's guess
    llm_lookahead: bool = True  # rows still decoding ride along in LLM forwards (decoder.py)
    prepack: bool = True  # CPU: linear layers on prepacked oneDNN weights (faster decode steps)
    engine: str = "auto"  # auto: native where the model is covered and agrees with hf; native; hf
    llm_device_map: str | None = None  # the LLM over devices (placement.py); None: whole on device
    max_memory: str | None = None  # llm_device_map: bytes per device, e.g. 0:20GiB;cpu:64GiB
    offload_folder: str | None = None  # llm_device_map: where modules mapped to disk are kept
    schedule: str = (
        "pause"  # pause: only waiting rows pause; lockstep: every row waits (comparison)
    )
    seed: int = 1234
    cost_slm: tuple[float, float] | None = (
        None  # (fixed s per forward, s per token); None = measure
    )
    cost_llm: tuple[float, float] | None = None
    cost_router: float | None = None  # s per router call; None = measure
    params_slm_nominal: float | None = (
        None  # a paper's quoted model size (activated_params_nominal)
    )
    params_llm_nominal: float | None = None
    accounting_path: str | None = None  # per-sample JSONL; default: next to lm-eval's sample logs
    record_tokens: bool = True  # records carry each token's place in the text (token_offsets)
    trust_remote_code: bool = False
    name: str | None = None  # label used in leaderboards; default built from router + threshold
    extra: dict[str, Any] = field(default_factory=dict)  # router-specific keys kept verbatim

    def __post_init__(self) -> None:
        _check_choice("dtype", self.dtype, DTYPES)
        if self.slm_dtype is not None:
            _check_choice("slm_dtype", self.slm_dtype, DTYPES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("engine", self.engine, ENGINES)
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"p={self.p} is out of range; give a rate between 0 and 1")
        for key in ("batch_size", "max_gen_toks", "gamma"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be a positive integer")
        if self.llm_min_batch < 0:
            raise ConfigError(
                "llm_min_batch must be >= 0 (0: the schedule weighs the two models' costs)"
            )
        if self.guess_ahead < 0:
            raise ConfigError(
                "guess_ahead must be >= 0 (0: a routed row waits for the LLM at once)"
            )
        for key in ("cost_slm", "cost_llm"):
            value = getattr(self, key)
            if value is not None and min(value) < 0:
                raise ConfigError(
                    f"{key}={value[0]:g}:{value[1]:g}: seconds cannot be negative "
                    "(fixed_s:per_token_s, e.g. 0.03:0.001; leave it out to measure)"
                )
        if self.cost_router is not None and self.cost_router < 0:
            raise ConfigError(f"cost_router={self.cost_router:g}: seconds cannot be negative")
        _check_nominal(self.params_slm_nominal, self.params_llm_nominal)
        from lm_eval_routed.placement_keys import check_keys  # imports this module

        check_keys(self.llm_device_map, self.max_memory, self.offload_folder)
        if self.device != "auto" and not DEVICE_FORM.fullmatch(self.device):
            raise ConfigError(
                f"device={self.device!r} is not supported; use auto, cpu, cuda[:N] or mps"
            )
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Non-finite numbers, and a max_length too short for a prompt token and a generated one."""
        for key in ("threshold", "p", "cost_router", "cost_slm", "cost_llm"):
            value = getattr(self, key)
            values = value if isinstance(value, tuple) else (value,)
            if any(v is not None and not math.isfinite(v) for v in values):
                raise ConfigError(f"{key}={_show(value)} is not a finite number")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(
                f"max_length={self.max_length} must be at least 2 (prompt + generation tokens); "
                "leave it out for the LLM's context size"
            )

    def check_room(self, max_new_tokens: int) -> None:
        """Refuse a generation budget that leaves ``max_length`` no room for a prompt (the budget
        is a task's, or ``max_gen_toks`` where the caller has no other)."""
        if self.max_length is not None and self.max_length <= max_new_tokens:
            raise ConfigError(
                f"max_length={self.max_length} leaves no room for a prompt beside "
                f"max_gen_toks={max_new_tokens}; raise max_length (prompt + generation) or lower "
                "max_gen_toks, or leave max_length out for the LLM's context size"
            )

    @property
    def label(self) -> str:
        """Short name for tables: the explicit ``name`` or router plus its knob."""
        if self.name:
            return self.name
        if self.router == "random":
            return f"random p={self.p:g}"
        return self.router if self.threshold is None else f"{self.router} t={self.threshold:g}"

    def replace(self, **changes: Any) -> RoutedConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _show(value: Any) -> str:
    """A value as the user wrote it: ``0.1:0.002`` for a cost pair."""
    if isinstance(value, tuple):
        return ":".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_nominal(slm: float | None, llm: float | None) -> None:
    if (slm is None) != (llm is None):
        raise ConfigError(
            "params_slm_nominal and params_llm_nominal go together; give both (e.g. 1.5e9 and 32e9)"
        )
    for key, value in (("params_slm_nominal", slm), ("params_llm_nominal", llm)):
        if value is not None and not 0 < value < float("inf"):
            raise ConfigError(f"{key}={value:g} must be a positive parameter count (e.g. 1.5e9)")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


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
        if key in knobs and reads is not None and key not in reads:
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


# Settings that change how fast a run goes, not what it writes: a resumed run may differ in them, and
# they do not name a run.
RUN_ONLY_KEYS = frozenset(
    {
        "batch_size",
        "llm_min_batch",
        "guess_ahead",
        "llm_lookahead",
        "prepack",
        "device",
        "llm_device_map",
        "max_memory",
        "offload_folder",
        "accounting_path",
        "record_tokens",
    }
)


def given_keys(args: dict[str, Any]) -> set[str]:
    """The keys a user set: those of ``args`` and of the config file or preset ``config=`` names."""
    keys = set(args) - {"config"}
    if args.get("config"):
        keys |= set(_read_yaml(str(args["config"])))
    return keys
