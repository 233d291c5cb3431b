"""The router protocol every routing policy implements, and the registry that picks one by name.

A router sees one decode step of the model that holds a row and answers a yes/no question per row.
What the decoder does with the answer is the router's ``kind`` (``RouterKind``): a ``TOKEN`` router
answers "does the LLM write this position instead of the SLM?"; for a ``STITCH`` router the same
question opens an LLM span, and ``keep_llm`` decides after each LLM token whether the LLM keeps
control; ``SPECULATIVE`` is lossless drafting, whose router only fixes the draft length.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import Tensor

from lm_eval_routed.errors import ConfigError


class RouterKind(Enum):
    """What the decoder does with a router's answers (module docstring); the value is recorded."""

    TOKEN = "token"  # noqa: S105 (a kind, not a secret)
    STITCH = "stitch"
    SPECULATIVE = "speculative"


@dataclass(frozen=True)
class StepView:
    """What a router may look at for the rows it is asked about (b rows).

    Attributes:
        logits: (b, V) raw next-token logits of the producing model (before temperature).
        hidden: (b, H) its last-layer hidden state (after the final norm) at that position.
        token: (b,) the token that model proposes (greedy or sampled).
        gens: one routing generator per row, seeded per sample, so decisions do not depend on the
            batch a sample lands in.
        context: (b,) tokens before the position (prompt + generated), for routers that read it.
        requests: each row's request, as its index in the decoder's ``generate`` list, for routers
            that read the context (R-Stitch+'s training keys its recorded decisions by it).
    """

    logits: Tensor
    hidden: Tensor
    token: Tensor
    gens: list[torch.Generator] = field(default_factory=list)
    context: Tensor | None = None
    requests: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Decisions:
    """A router's answers for b rows, and the router calls each row is charged for them."""

    chosen: Tensor  # (b,) bool
    calls: list[int]  # per row: router calls (params_router and cost_router are charged per call)

    @classmethod
    def one_call_each(cls, chosen: Tensor) -> Decisions:
        """Answers that cost each row one router call."""
        return cls(chosen, [1] * chosen.shape[0])


class Router:
    """Base class: a policy deciding which positions the LLM writes."""

    name: ClassVar[str] = "base"
    kind: ClassVar[RouterKind] = RouterKind.TOKEN
    # StepView.context and .requests are filled in, at the SLM's step, only for routers that read them
    reads_context: ClassVar[bool] = False
    threshold: float | None = None

    def route(self, slm: StepView) -> Tensor:
        """(b,) bool: True where the LLM should write this position instead of the SLM."""
        raise NotImplementedError

    def pre_route(self, gens: list[torch.Generator]) -> Tensor | None:
        """Decide before the SLM runs, for policies that never look at it (None: ask ``route``).

        Rows sent to the LLM here skip the SLM forward for this position; the SLM catches up later.
        """
        return None

    def keep_llm(self, llm: StepView) -> Tensor:
        """``STITCH`` routers only. (b,) bool: True where the LLM keeps control after its token."""
        return torch.zeros(llm.token.shape[0], dtype=torch.bool, device=llm.token.device)

    def route_step(self, slm: StepView) -> Decisions:
        """``route`` with the calls it cost each row: one each, unless the router says otherwise."""
        return Decisions.one_call_each(self.route(slm))

    def keep_step(self, llm: StepView) -> Decisions:
        """``keep_llm`` with the calls it cost each row: one each, unless the router says otherwise."""
        return Decisions.one_call_each(self.keep_llm(llm))

    @property
    def num_params(self) -> int:
        """Parameters run per router call (0 for training-free policies)."""
        return 0

    def info(self) -> dict[str, Any]:
        """Run-level description recorded in the results (kind, threshold, checkpoint hash)."""
        return {"router": self.name, "mode": self.kind.value, "threshold": self.threshold}


# name -> factory(cfg, slm_model) -> Router. Factories import lazily so a name costs nothing.
_REGISTRY: dict[str, Callable[..., Router]] = {}
# name -> check(cfg): what a router can refuse before any model loads (minutes for a large pair).
_CHECKS: dict[str, Callable[[Any], object]] = {}
# name -> the config keys the router itself reads (its knobs)
_KNOBS: dict[str, tuple[str, ...]] = {}
# name -> the router's kind, known before it is built: the decoding options it takes follow from it
_KINDS: dict[str, RouterKind] = {}
# the decoding options each kind of router takes beside its own knobs (``guess_ahead``: a routed
# position's SLM token kept as a guess, which only per-token routing has)
KIND_OPTIONS: dict[RouterKind, tuple[str, ...]] = {
    RouterKind.TOKEN: ("guess_ahead",),
    RouterKind.STITCH: (),
    RouterKind.SPECULATIVE: (),
}


def register_router(
    name: str,
    kind: RouterKind,
    check: Callable[[Any], object] | None = None,
    knobs: tuple[str, ...] = (),
) -> Callable[[Callable[..., Router]], Callable[..., Router]]:
    """Decorator: register a router factory ``f(cfg, slm) -> Router`` of ``kind`` under ``name``.

    ``check(cfg)``, if given, raises ConfigError on what it can see without the models (a
    checkpoint's path, a threshold's range); ``check_router`` runs it before they load.
    ``knobs`` names the config keys the router itself reads (``threshold``, ``p``, ... or keys of
    its own, which ``load_config`` then accepts into ``cfg.extra``); the decoding options its kind
    takes (``KIND_OPTIONS``) are added to them. A knob given to a router that does not read it is
    refused rather than ignored.
    """

    def deco(factory: Callable[..., Router]) -> Callable[..., Router]:
        if name in _REGISTRY:
            raise ValueError(f"router {name!r} registered twice")
        _REGISTRY[name] = factory
        if check is not None:
            _CHECKS[name] = check
        _KINDS[name] = kind
        _KNOBS[name] = (*knobs, *KIND_OPTIONS[kind])
        return factory

    return deco


def knobs_of(name: str) -> tuple[str, ...]:
    """The config keys router ``name`` reads: its own knobs, then its kind's decoding options."""
    _known(name)
    return _KNOBS[name]


def kind_of(name: str) -> RouterKind:
    """The kind router ``name`` registered with."""
    _known(name)
    return _KINDS[name]


def knob_names() -> set[str]:
    """Every knob some registered router reads."""
    _load_builtin()
    return {k for knobs in _KNOBS.values() for k in knobs}


def readers_of(knob: str) -> list[str]:
    """The routers that read ``knob``."""
    _load_builtin()
    return sorted(name for name, knobs in _KNOBS.items() if knob in knobs)


def _check_knobs(cfg: Any) -> None:
    """A knob set away from its default on a router that does not read it (configs built in code)."""
    reads = _KNOBS[cfg.router]
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for key in knob_names() - set(reads):
        value = getattr(cfg, key, None) if key in defaults else cfg.extra.get(key)
        if value is not None and value != defaults.get(key):
            what = f"reads only {', '.join(reads)}" if reads else "reads no knob"
            raise ConfigError(f"{key}={value} is not read by router={cfg.router}, which {what}")


def router_names() -> list[str]:
    """Every registered router name."""
    _load_builtin()
    return sorted(_REGISTRY)


def check_router(cfg: Any) -> None:
    """Refuse an unknown router, or what its own check sees, before the models load."""
    _known(cfg.router)
    _check_knobs(cfg)
    if cfg.router in _CHECKS:
        _CHECKS[cfg.router](cfg)


def make_router(name: str, cfg: Any, slm: torch.nn.Module | None = None) -> Router:
    """Build the router ``name`` for config ``cfg`` (an unknown name lists the valid ones)."""
    _known(name)
    router = _REGISTRY[name](cfg, slm)
    if router.kind is not _KINDS[name]:
        raise TypeError(f"router {name!r} registered as {_KINDS[name]} but built a {router.kind}")
    return router


def _known(name: str) -> None:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown router {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")


def _load_builtin() -> None:
    from lm_eval_routed.routers import (  # noqa: F401
        citer,
        entropy,
        r2r,
        rstitch_plus,
        speculative,
        static,
    )


def file_sha256(path: str) -> str:
    """Hex sha256 of a file (checkpoint fingerprints in run info)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
