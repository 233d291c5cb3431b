"""RoutedConfig: the one description of a routed run, each setting declared once with what it affects.

Every user-facing form (``--model_args k=v,...``, ``config=demo``, a YAML file, ``ROUTED_MODEL_ARGS``)
ends here (parsed by ``config_args.py``), is validated once, and fails with one line naming the key
and what it accepts.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.placement_keys import check_keys

DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("pause", "lockstep")
ENGINES = ("auto", "native", "hf")
DEVICE_FORM = re.compile(r"(cpu|mps|cuda)(:\d+)?")

log = logging.getLogger(__name__)


class Affects(enum.Flag):
    """What changing a setting changes. The sets below, the sweep's and the docs' table
    (docs/configuration.md) are read from each field's own declaration."""

    OUTPUT = enum.auto()  # what a run generates, scores or records: it names a run
    SPEED = enum.auto()  # how fast the run goes
    LOADING = enum.auto()  # which weights are loaded, and where
    LOGGING = enum.auto()  # what is logged beside the results, and where


def setting(default: Any, affects: Affects, doc: str, shown: str | None = None) -> Any:
    """A RoutedConfig field that describes itself: what it ``affects``, its one-line ``doc`` and
    the default as the docs ``shown`` it (where the value alone would mislead, e.g. None)."""
    return field(default=default, metadata={"affects": affects, "doc": doc, "shown": shown})


_O, _S, _L, _LOG = Affects.OUTPUT, Affects.SPEED, Affects.LOADING, Affects.LOGGING


@dataclass(frozen=True)
class RoutedConfig:
    """Everything a routed run needs; each field's doc is its row in docs/configuration.md."""

    slm: str = setting(
        "demo:slm",
        _O | _L,
        "hub id, local folder, or `path/to/file.gguf`; both models must share one vocabulary. "
        "`random:DIR`: the model DIR's config describes, with random weights (speed measurements)",
    )
    llm: str = setting("demo:llm", _O | _L, "the large model, in the forms `slm` takes")
    router: str = setting(
        "slm-only", _O, "who decides which model writes each token (the README's router table)"
    )
    threshold: float | None = setting(
        None,
        _O,
        "the router's threshold; units differ per router (`entropy`, `rstitch-plus`: normalized "
        "H/log V; `entropy-token`: nats; `r2r`, `citer`: a probability)",
        shown="router's own",
    )
    p: float = setting(0.1, _O, "`random`: the LLM rate")
    router_ckpt: str | None = setting(
        None,
        _O,
        "`r2r`/`citer`/`rstitch-plus`: a `router_ckpts/<name>/` folder (safetensors + JSON), R2R's "
        "official `.pt` dict, or CITER's `mlp_iter_*.pth` state dict",
    )
    gamma: int = setting(4, _O, "`speculative`: draft length")
    dtype: str = setting(
        "auto",
        _O | _S | _L,
        "`auto` (float32 on CPU, bfloat16 on GPU), `float32`, `bfloat16`, `float16`",
    )
    slm_dtype: str | None = setting(
        None,
        _O | _S | _L,
        "the SLM's own dtype, for a cheaper SLM beside an LLM at full precision; in bf16 greedy "
        "outputs can depend on the batch size where two tokens nearly tie",
        shown="`dtype`",
    )
    device: str = setting(
        "auto",
        _S | _L,
        "`auto` (cuda if available, else cpu), `cpu`, `cuda[:N]`, `mps`: where the SLM runs, and "
        "the LLM unless `llm_device_map` places it",
    )
    batch_size: int = setting(
        1,
        _S,
        "rows decoded at once (finished rows take the next request); set here, it wins over "
        "lm-eval's `--batch_size`",
        shown="lm-eval's `--batch_size`",
    )
    max_length: int | None = setting(
        None,
        _O,
        "prompt + generation budget (at least 2); longer prompts are cut from the left with a warning",
        shown="the LLM's context size",
    )
    max_gen_toks: int = setting(256, _O, "new-token budget when a task sets none")
    llm_min_batch: int = setting(
        0,
        _S,
        "the LLM runs once this many rows wait for it, or when every row waits; 0: when the cost "
        "model says waiting longer gains tokens more slowly (`core/schedule.py`)",
    )
    guess_ahead: int = setting(
        0,
        _S,
        "per-token routers, greedy rows: a routed row decodes up to this many tokens on the SLM's "
        "guess until the LLM checks it (outputs do not change); 0 is off",
    )
    llm_lookahead: bool = setting(
        True,
        _S,
        "per-token and stitch routers: rows still decoding ride along in each LLM forward and take "
        "its token for their next position when it is routed (outputs do not change)",
    )
    prepack: bool = setting(
        True,
        _S,
        "CPU only: the engines run linear layers on weights reordered for oneDNN (a second copy of "
        "the linear weights in RAM); the models stay as loaded",
    )
    engine: str = setting(
        "auto",
        _O | _S,
        "`native` (one loop over Llama/Mistral/Qwen2/Qwen3 weights), `hf` (Hugging Face's modules), "
        "`auto`: native where it covers the model and agrees with hf on a probe forward",
    )
    compile: bool = setting(
        False,
        _O | _S,
        "decode steps of one token per row (the SLM's step, the LLM's plain decode) run at static "
        "shapes through `torch.compile` (CUDA graphs on a GPU), native engine only; the first steps "
        "of each batch size compile (seconds to minutes); logits agree to rounding, not bitwise",
    )
    llm_device_map: str | None = setting(
        None,
        _S | _L,
        "the LLM over several devices with accelerate: `auto`, `balanced`, `balanced_low_0`, "
        "`sequential`, one device, or a module map (`model.layers.0:0;...;lm_head:cpu`, JSON, or a "
        "`.json` file)",
    )
    max_memory: str | None = setting(
        None,
        _S | _L,
        "with `llm_device_map`: bytes each device may hold, `0:20GiB;1:20GiB;cpu:64GiB`",
        shown="free memory less 10% of each GPU",
    )
    offload_folder: str | None = setting(
        None, _S | _L, "with `llm_device_map`: lets modules go to `disk`, kept in this folder"
    )
    schedule: str = setting(
        "pause",
        _O | _S,
        "`pause`: only rows that need the LLM wait; `lockstep`: every row waits whenever one needs "
        "it (for comparison)",
    )
    seed: int = setting(
        1234,
        _O,
        "per-sample seeds derive from it, so sampling and random routing do not depend on "
        "batching; set here or in a config file, it wins over lm-eval's `--seed`",
        shown="lm-eval's torch seed (1234)",
    )
    cost_slm: tuple[float, float] | None = setting(
        None,
        _O | _S,
        "`fixed_s:per_token_s` of one SLM forward, for modeled latency and the default schedule",
        shown="measured at start-up",
    )
    cost_llm: tuple[float, float] | None = setting(
        None, _O | _S, "the same for the LLM", shown="measured at start-up"
    )
    cost_router: float | None = setting(
        None, _O, "seconds per router call (modeled latency)", shown="0"
    )
    latency_model: str | None = setting(
        None,
        _O | _S,
        "a latency model's JSON (`calibrate latency`, or an `rstitch-plus` checkpoint's "
        "`latency.json`): modeled latency then prices each forward by its fitted T_prefill / "
        "T_decode at the row's cache length, and the schedule weighs its costs at an empty cache; "
        "instead of `cost_slm` / `cost_llm`",
    )
    params_slm_nominal: float | None = setting(
        None,
        _O,
        "the SLM size a paper quotes (e.g. `1.5e9`; with `params_llm_nominal`): records then also "
        "carry `activated_params_nominal`",
    )
    params_llm_nominal: float | None = setting(
        None, _O, "the LLM size a paper quotes (e.g. `32e9`; with `params_slm_nominal`)"
    )
    accounting_path: str | None = setting(
        None,
        _LOG,
        "also append every record to this JSONL as it is produced (each line carries `config`, the "
        "label, and in a sweep `cell`; under `sweep --launcher ray` each cell appends to "
        "`<stem>.<label>.<task>.jsonl` beside it)",
    )
    record_tokens: bool = setting(
        True, _LOG, "records carry `token_offsets`, each generated token's place in the response"
    )
    trust_remote_code: bool = setting(
        False, _O | _L, "let transformers run code shipped with a hub model (both models)"
    )
    name: str | None = setting(
        None,
        _O,
        "the label in leaderboards and a sweep's folder for the configuration",
        shown="built from the router and its knob",
    )
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
        if self.latency_model is not None and (self.cost_slm or self.cost_llm):
            raise ConfigError(
                f"latency_model={self.latency_model} prices the forwards that cost_slm / cost_llm "
                "would: give one or the other"
            )
        if self.cost_router is not None and self.cost_router < 0:
            raise ConfigError(f"cost_router={self.cost_router:g}: seconds cannot be negative")
        _check_nominal(self.params_slm_nominal, self.params_llm_nominal)
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


def effects() -> dict[str, Affects]:
    """What each setting affects, as its field declares it, in declaration order."""
    return {f.name: f.metadata["affects"] for f in fields(RoutedConfig) if f.metadata}


def keys_affecting(affects: Affects) -> tuple[str, ...]:
    """The settings whose declaration says they change any of ``affects``."""
    return tuple(key for key, declared in effects().items() if declared & affects)


# Settings that leave what a run writes unchanged: a resumed run may differ in them, and they do
# not name a run.
RUN_ONLY_KEYS = frozenset(effects()) - set(keys_affecting(Affects.OUTPUT))
