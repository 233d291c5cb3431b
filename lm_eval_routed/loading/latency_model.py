"""R-Stitch+'s latency model (arXiv 2507.17307): a fitted price for each forward of each model.

Per model, in seconds, with N_inf new tokens fed on top of a cache of N_kv tokens:
    T_prefill(N_inf, N_kv) = a N_inf N_kv + b N_inf^2 + c N_inf + d      (N_inf > 1)
    T_decode(N_kv)         = c' N_kv + d'                                 (N_inf = 1)
each fitted by least squares from timed forwards (``fit_model``, from ``Timing`` records; ``time_grid``
times an engine over a grid of (N_inf, N_kv)). ``latency_of`` prices a stitched trajectory: the prompt's
prefill, each model's catch-up after a switch and every decode step of both models. The pair's fit is
saved as JSON (``save`` / ``load``), beside a router checkpoint or as a run's file.

The cost model of a run (``core/accounting.CostModel``, ``fixed + per_token * n``, timed at start-up by
``loading/costs.py``) is this model's T_prefill at N_kv = 0 without the quadratic term; ``calibrate``
writes it from this fit (``cost_pair``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lm_eval_routed.core.accounting import Model
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic
from lm_eval_routed.loading.costs import time_forward

FORMAT = "lm-eval-routed latency model"
VERSION = 1
DEFAULT_N_INF = (1, 8, 32, 128)
DEFAULT_N_KV = (0, 64, 256, 512)


@dataclass(frozen=True)
class Timing:
    """One timed forward: ``n_inf`` new tokens after ``n_kv`` cached ones took ``seconds``."""

    n_inf: int
    n_kv: int
    seconds: float


@dataclass(frozen=True)
class ModelLatency:
    """One model's fitted constants, in seconds (module docstring); ``r2_*`` say how well each fits."""

    a: float  # per N_inf * N_kv (attention over the cache)
    b: float  # per N_inf^2 (attention within the new tokens)
    c: float  # per new token
    d: float  # per prefill call
    c_decode: float  # c': per cached token, one decode step
    d_decode: float  # d': per decode step
    r2_prefill: float = 1.0
    r2_decode: float = 1.0

    def prefill(self, n_inf: int, n_kv: int) -> float:
        """Modeled seconds of a forward over ``n_inf`` > 1 new tokens after ``n_kv`` cached ones."""
        return self.a * n_inf * n_kv + self.b * n_inf**2 + self.c * n_inf + self.d

    def decode(self, n_kv: int) -> float:
        """Modeled seconds of one decode step after ``n_kv`` cached tokens."""
        return self.c_decode * n_kv + self.d_decode

    def forward(self, n_inf: int, n_kv: int) -> float:
        """A forward of either shape: one new token is a decode step, more a prefill."""
        return self.decode(n_kv) if n_inf == 1 else self.prefill(n_inf, n_kv)


@dataclass(frozen=True)
class LatencyModel:
    """The pair's fits, and where they were measured (recorded, not read back into the fit)."""

    slm: ModelLatency
    llm: ModelLatency
    measured: dict[str, Any] | None = None  # device, dtype, model refs, the timings

    def of(self, model: Model) -> ModelLatency:
        """The fit of ``model``."""
        return self.slm if model is Model.SLM else self.llm

    def seconds(self, model: Model, n_inf: int, n_kv: int) -> float:
        """Modeled seconds of a forward of ``model`` (a run's cost model prices forwards by it:
        ``core/accounting.ForwardPrices``); a forward fed nothing costs nothing."""
        return self.of(model).forward(n_inf, n_kv) if n_inf > 0 else 0.0


# -- the fit ---------------------------------------------------------------------------------------


def _lstsq(rows: list[list[float]], times: list[float]) -> tuple[list[float], float]:
    """Least-squares coefficients of ``rows @ coef ~= times`` (float64), and R^2."""
    x = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(times, dtype=torch.float64)
    coef = torch.linalg.lstsq(x, y.unsqueeze(-1), driver="gelsd").solution.flatten()
    resid = y - x @ coef
    spread = float((y - y.mean()).pow(2).sum())
    r2 = 1.0 - float(resid.pow(2).sum()) / spread if spread > 0 else 1.0
    return [float(v) for v in coef], r2


def fit_model(timings: Iterable[Timing]) -> ModelLatency:
    """Fit one model's T_prefill (timings with n_inf > 1) and T_decode (n_inf = 1) by least squares."""
    timings = list(timings)
    pre = [t for t in timings if t.n_inf > 1]
    dec = [t for t in timings if t.n_inf == 1]
    if len({t.n_inf for t in pre}) < 3 or len({t.n_kv for t in pre}) < 2:
        raise ConfigError(
            "the prefill fit needs timings at 3 or more new-token counts above 1 and 2 or more cache "
            "lengths (its four constants); widen the grid"
        )
    if len({t.n_kv for t in dec}) < 2:
        raise ConfigError(
            "the decode fit needs one-token timings at 2 or more cache lengths; add n_inf=1 to the grid"
        )
    (a, b, c, d), r2_p = _lstsq(
        [[t.n_inf * t.n_kv, t.n_inf**2, t.n_inf, 1.0] for t in pre], [t.seconds for t in pre]
    )
    (c_dec, d_dec), r2_d = _lstsq([[t.n_kv, 1.0] for t in dec], [t.seconds for t in dec])
    return ModelLatency(a, b, c, d, c_dec, d_dec, r2_p, r2_d)


def time_grid(
    engine,
    n_inf: Iterable[int] = DEFAULT_N_INF,
    n_kv: Iterable[int] = DEFAULT_N_KV,
    repeats: int = 3,
    progress: Callable[[], None] | None = None,
) -> list[Timing]:
    """Time ``engine`` at every (n_inf, n_kv) of the grid after one warm-up forward; ``progress``
    is called once per grid point."""
    time_forward(engine, 1, 0, 1)  # warm-up: kernels chosen, buffers allocated
    out = []
    for n in n_inf:
        for kv in n_kv:
            out.append(Timing(n, kv, time_forward(engine, n, kv, repeats)))
            if progress is not None:
                progress()
    return out


# -- a trajectory's latency ------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Tokens one model wrote while it held control."""

    model: Model
    tokens: int


@dataclass(frozen=True)
class Trajectory:
    """A stitched decode as R-Stitch runs it: the prompt, then who held control, span by span.

    The SLM decodes by default. An LLM span opens on a switch at an SLM token: the SLM's forward at
    that position ran, its token was dropped and the LLM, after catching up on what it has not seen,
    regenerates it. Two LLM spans in a row are two switches (the LLM handed back and the SLM's next
    token switched again). Each model feeds, in its next forward, every token it has not seen.
    """

    prompt_tokens: int
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class Forward:
    """One forward of a trajectory: ``model`` fed ``n_inf`` new tokens after ``n_kv`` cached ones."""

    model: Model
    n_inf: int
    n_kv: int


def forwards_of(traj: Trajectory) -> list[Forward]:
    """Every forward the trajectory costs, in order (``Trajectory``'s rules)."""
    held = {Model.SLM: 0, Model.LLM: 0}
    context = traj.prompt_tokens  # tokens before the next position
    out: list[Forward] = []

    def step(model: Model) -> None:
        out.append(Forward(model, context - held[model], held[model]))
        held[model] = context

    for span in traj.spans:
        if span.model is Model.LLM and span.tokens:
            step(Model.SLM)  # the SLM's token the switch drops
        for _ in range(span.tokens):
            step(span.model)
            context += 1
    return out


def latency_of(traj: Trajectory, model: LatencyModel) -> float:
    """L-hat: modeled seconds of the trajectory's prefills (prompt, catch-ups) and decode steps."""
    return sum(model.of(f.model).forward(f.n_inf, f.n_kv) for f in forwards_of(traj))


# -- JSON ------------------------------------------------------------------------------------------


def to_json(model: LatencyModel) -> dict[str, Any]:
    """The JSON object ``save`` writes."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "units": "seconds",
        "formula": {
            "prefill": "a*n_inf*n_kv + b*n_inf^2 + c*n_inf + d (n_inf > 1)",
            "decode": "c_decode*n_kv + d_decode (n_inf = 1)",
        },
        "slm": asdict(model.slm),
        "llm": asdict(model.llm),
        "measured": model.measured or {},
    }


def save(path: Path, model: LatencyModel) -> None:
    """Write the pair's latency model as JSON, whole or not at all."""
    write_atomic(Path(path), json.dumps(to_json(model), indent=2) + "\n")


def _fit_from(raw: Any, where: str) -> ModelLatency:
    names = [f for f in ModelLatency.__dataclass_fields__]
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object with {', '.join(names)}")
    values = {}
    for key in names:
        value = raw.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{where}.{key}={value!r} must be a finite number")
        values[key] = float(value)
    return ModelLatency(**values)


def load(path: Path) -> LatencyModel:
    """Read a latency model ``save`` wrote; anything else is one line naming what is wrong."""
    path = Path(path)
    fix = "write it with `lm-eval-routed calibrate latency`"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"latency model {path}: no such file; {fix}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"latency model {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
            f"{err.msg}); {fix}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read latency model {path}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f'{path} is not a latency model (no "format": "{FORMAT}"); {fix}')
    if raw.get("version") != VERSION:
        raise ConfigError(f"{path} is latency model version {raw.get('version')!r}, not {VERSION}")
    measured = raw.get("measured")
    return LatencyModel(
        _fit_from(raw.get("slm"), f"{path}: slm"),
        _fit_from(raw.get("llm"), f"{path}: llm"),
        measured if isinstance(measured, dict) else None,
    )


def cost_pair(fit: ModelLatency) -> tuple[float, float]:
    """``(fixed_s, per_token_s)`` for a run's cost model: T_prefill at N_kv = 0 without its quadratic
    term, never negative."""
    return max(fit.d, 0.0), max(fit.c, 0.0)
