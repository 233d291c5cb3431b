"""The per-sample accounting record (a project contract) and the cost model behind modeled latency.

Activated parameters follow R2R (arXiv 2505.21600, Sec. 5): per sample,
    (n_slm_tokens * P_slm + n_llm_tokens * P_llm) / (n_slm_tokens + n_llm_tokens),
which charges neither the SLM forward on routed positions nor the router. P is the exact parameter count
(embeddings and untied heads included). R2R's paper puts the models' nominal sizes there instead (1.5 and
32 billion for its pair), so its figures read lower than exact counts of the same run;
``activated_params_nominal`` is that figure, filled in when the run is given nominal sizes
(``params_slm_nominal``, ``params_llm_nominal``).
``activated_params_charged`` adds what the R2R figure leaves out: the SLM on every generated token, the
LLM on every position it scored, the router per call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple, Protocol


class Model(str, Enum):
    """Which of the pair a forward, a token or a cost belongs to (equal to its name as a string)."""

    SLM = "slm"
    LLM = "llm"


class ForwardCost(NamedTuple):
    """Modeled seconds of one forward: ``fixed + per_token * tokens``."""

    fixed: float
    per_token: float

    def seconds(self, tokens: int) -> float:
        """Modeled seconds of one forward over ``tokens`` tokens."""
        return self.fixed + self.per_token * tokens


class ForwardPrices(Protocol):
    """Modeled seconds of one forward of ``model`` over ``n_inf`` new tokens after ``n_kv`` cached
    ones (R-Stitch+'s latency model, ``loading/latency_model.LatencyModel``)."""

    def seconds(self, model: Model, n_inf: int, n_kv: int) -> float: ...


@dataclass(frozen=True)
class CostModel:
    """Seconds per forward call of each model (``ForwardCost``, or a (fixed, per_token) pair), and
    ``router`` seconds per router call. With ``prices``, modeled latency prices each forward by them
    (the cache length counts); ``slm`` / ``llm`` still set the schedule's cost rule."""

    slm: ForwardCost
    llm: ForwardCost
    router: float = 0.0
    source: str = "config"  # "config", "measured" or "latency_model"
    prices: ForwardPrices | None = None

    def __post_init__(self) -> None:
        for model in Model:  # pairs from a config or a script read as records
            object.__setattr__(self, model.value, ForwardCost(*getattr(self, model.value)))

    def of(self, model: Model) -> ForwardCost:
        """The forward cost of ``model``."""
        return self.slm if model == Model.SLM else self.llm

    def forward_s(self, model: Model, tokens: int, cached: int = 0) -> float:
        """Modeled seconds of one forward of ``model`` over ``tokens`` new tokens after ``cached``
        ones (the cache length counts only with ``prices``)."""
        if self.prices is not None:
            return self.prices.seconds(model, tokens, cached)
        return self.of(model).seconds(tokens)


@dataclass(frozen=True)
class ParamSizes:
    """Parameter counts charged per token: exact counts, and the nominal sizes a paper quotes if given."""

    slm: int
    llm: int
    router: int = 0
    slm_nominal: float | None = None
    llm_nominal: float | None = None


@dataclass(frozen=True)
class SampleRecord:
    """One generated sample's accounting (DESIGN.md contract); ``tokens_slm + tokens_llm == tokens``."""

    tokens: int
    tokens_slm: int
    tokens_llm: int
    llm_share: float
    switches: int
    slm_forward_tokens: int
    llm_forward_tokens: int
    router_calls: int
    params_slm: int
    params_llm: int
    params_router: int
    activated_params: float
    activated_params_charged: float
    activated_params_nominal: float | None  # None unless the run was given nominal sizes
    latency_s: float
    modeled_latency_s: float
    llm_positions: list[int] = field(default_factory=list)
    llm_calls: int = 0
    slm_calls: int = 0
    scored_by: str = "generate"  # "generate", or "llm" for loglikelihood requests
    token_offsets: list[int] | None = None  # token i wrote text[off[i]:off[i + 1]] (offsets.py)
    key: dict[str, Any] = field(default_factory=dict)  # task, doc_id, repeat, prompt_hash

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass
class SampleTally:
    """Counters a row accumulates while it decodes; frozen into a SampleRecord at the end."""

    producers: list[str] = field(default_factory=list)  # "slm" / "llm" per committed token
    slm_forward_tokens: int = 0
    llm_forward_tokens: int = 0
    llm_scored_positions: int = (
        0  # LLM output positions used (1 per call; drafts + 1 when verifying)
    )
    router_calls: int = 0
    slm_calls: int = 0
    llm_calls: int = 0
    latency_s: float = 0.0
    modeled_latency_s: float = 0.0

    def record(self, params: ParamSizes, key: dict[str, Any] | None = None) -> SampleRecord:
        """Freeze the counters into the contract record, given the models' parameter sizes."""
        p_slm, p_llm, p_router = params.slm, params.llm, params.router
        n = len(self.producers)
        n_llm = self.producers.count("llm")
        n_slm = n - n_llm
        activated = (n_slm * p_slm + n_llm * p_llm) / n if n else 0.0
        nominal = None
        if params.slm_nominal is not None and params.llm_nominal is not None:
            nominal = (n_slm * params.slm_nominal + n_llm * params.llm_nominal) / n if n else 0.0
        charged = (
            (n * p_slm + self.llm_scored_positions * p_llm + self.router_calls * p_router) / n
            if n
            else 0.0
        )
        switches = sum(a != b for a, b in zip(self.producers, self.producers[1:]))
        return SampleRecord(
            tokens=n,
            tokens_slm=n_slm,
            tokens_llm=n_llm,
            llm_share=n_llm / n if n else 0.0,
            switches=switches,
            slm_forward_tokens=self.slm_forward_tokens,
            llm_forward_tokens=self.llm_forward_tokens,
            router_calls=self.router_calls,
            params_slm=p_slm,
            params_llm=p_llm,
            params_router=p_router,
            activated_params=activated,
            activated_params_charged=charged,
            activated_params_nominal=nominal,
            latency_s=self.latency_s,
            modeled_latency_s=self.modeled_latency_s,
            llm_positions=[i for i, who in enumerate(self.producers) if who == "llm"],
            llm_calls=self.llm_calls,
            slm_calls=self.slm_calls,
            key=dict(key or {}),
        )
