"""Decoding options that depend on each other resolve once (``decode_options``), and which options a
router takes follows from its kind, declared when it registers, not from each router's knob list."""

from __future__ import annotations

import pytest

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.schedule import DecodeOptions, Schedule, decode_options
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.routers.base import (
    KIND_OPTIONS,
    Router,
    RouterKind,
    kind_of,
    knobs_of,
    make_router,
    register_router,
    router_names,
)

T, S, P = RouterKind.TOKEN, RouterKind.STITCH, RouterKind.SPECULATIVE


@pytest.mark.parametrize(
    "kind,schedule,min_batch,guess,lookahead,want",
    [
        (T, Schedule.PAUSE, 0, 4, True, DecodeOptions(0, 4, True)),
        (T, Schedule.PAUSE, 3, 0, False, DecodeOptions(3, 0, False)),
        # lockstep: the LLM at every routed token, nothing riding along or guessed
        (T, Schedule.LOCKSTEP, 0, 4, True, DecodeOptions(1, 0, False)),
        (T, Schedule.LOCKSTEP, 5, 0, True, DecodeOptions(1, 0, False)),
        # only per-token routing guesses ahead
        (S, Schedule.PAUSE, 0, 4, True, DecodeOptions(0, 0, True)),
        # speculative decoding verifies its own drafts: nothing rides along with them
        (P, Schedule.PAUSE, 2, 4, True, DecodeOptions(2, 0, False)),
        (P, Schedule.LOCKSTEP, 0, 0, True, DecodeOptions(1, 0, False)),
    ],
)
def test_the_options_resolve_once_from_settings_and_kind(
    kind, schedule, min_batch, guess, lookahead, want
):
    assert decode_options(kind, schedule, min_batch, guess, lookahead) == want


def test_the_schedule_setting_and_the_enum_name_the_same_choices():
    from lm_eval_routed.config import SCHEDULES

    assert {s.value for s in Schedule} == set(SCHEDULES)


def test_what_a_router_reads_is_its_own_knobs_then_its_kinds_options():
    own = {
        "slm-only": (), "llm-only": (), "random": ("p",), "entropy": ("threshold",),
        "entropy-token": ("threshold",), "r2r": ("router_ckpt", "threshold"),
        "citer": ("router_ckpt", "threshold"), "speculative": ("gamma",),
        "rstitch-plus": ("router_ckpt", "threshold"),
    }  # fmt: skip
    kinds = {"entropy": S, "rstitch-plus": S, "speculative": P}
    for name in router_names():
        kind = kinds.get(name, T)
        assert kind_of(name) is kind, name
        assert knobs_of(name) == (*own[name], *KIND_OPTIONS[kind]), name


@pytest.mark.parametrize("router", ["entropy", "rstitch-plus", "speculative"])
def test_guess_ahead_is_refused_where_the_kind_cannot_guess(router):
    with pytest.raises(ConfigError, match=f"guess_ahead=2 is not read by router={router}"):
        load_config({"router": router, "guess_ahead": "2"})


@pytest.mark.parametrize("router", ["slm-only", "random", "entropy-token"])
def test_guess_ahead_is_taken_by_per_token_routers(router):
    assert load_config({"router": router, "guess_ahead": "2"}).guess_ahead == 2


def test_a_router_built_of_another_kind_than_it_registered_is_refused(monkeypatch):
    from lm_eval_routed.routers import base

    class Stitcher(Router):
        kind = RouterKind.STITCH

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_KINDS", dict(base._KINDS))
    monkeypatch.setattr(base, "_KNOBS", dict(base._KNOBS))
    register_router("mislabelled", RouterKind.TOKEN)(lambda cfg, slm: Stitcher())
    with pytest.raises(
        TypeError, match="registered as RouterKind.TOKEN but built a RouterKind.STITCH"
    ):
        make_router("mislabelled", None)
