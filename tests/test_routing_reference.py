"""Mixed routing, position by position, against plain full-sequence forwards of each model.

Each run's samples are replayed by ``routing_reference``: every token must be the argmax of the model
its record names, given the committed prefix, and the router's rule recomputed from the plain SLM
forward (the LLM's, for R-Stitch's hand-back) must send the position to that model. The second half
breaks the decoder on purpose (either model's catch-up short of a token, the SLM's cache holding its
own token where the LLM wrote, a decision or a hand-back one position late) and checks that the
replay fails, on both engines, at batch 1 and 8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from routing_reference import (
    PlainModel,
    Replay,
    Routing,
    citer_rule,
    entropy_token_rule,
    r2r_rule,
    replay,
    stitch_rule,
)
from safetensors.torch import load_file

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.accounting import Model
from lm_eval_routed.core.decoder import MixedDecoder
from lm_eval_routed.core.outcome import Outcome
from lm_eval_routed.core.rows import GenRequest, Row
from lm_eval_routed.loading.runtime import RoutedRuntime, build_runtime
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.citer import CiterNet
from lm_eval_routed.routers.r2r import R2RNet

PROMPTS = [
    "The cat sat",
    "2+2=",
    "Once upon a time, in a land far",
    "x",
    "Hello world\n",
    "abc" * 5,
    "Routing tokens",
    "zz top",
]
N_NEW = 20
COSTS = {"cost_slm": "0.001:0.0001", "cost_llm": "0.01:0.001"}
# thresholds near the middle of each score's spread on the tiny pair, so both models write
ENTROPY_TOKEN_TAU, STITCH_TAU, R2R_THRESHOLD, CITER_THRESHOLD = 3.6, 0.8, 0.5, 0.5


@dataclass
class Ckpt:
    """A small random router saved as a checkpoint folder, and the weights the folder holds (read
    back with safetensors, for the reference's own forward)."""

    folder: str
    weights: dict[str, torch.Tensor] = field(repr=False)


@pytest.fixture(scope="module")
def plain(pair):
    """The pair as the reference calls it: plain forwards, shared by every test of the module."""
    return PlainModel(pair[0]), PlainModel(pair[1])


@pytest.fixture(scope="module")
def r2r_ckpt(tmp_path_factory, pair):
    torch.manual_seed(0)
    sizes = {"width": 32, "blocks": 2, "top_k": 10}
    net = R2RNet(pair[0].config.hidden_size, **sizes).eval()
    folder = tmp_path_factory.mktemp("r2r")
    cfg = {"kind": "r2r", "hidden_size": 64, "vocab_size": 98, "threshold": 0.5, **sizes}
    checkpoint.save(folder, net, cfg)
    return Ckpt(str(folder), load_file(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def citer_ckpt(tmp_path_factory, pair):
    torch.manual_seed(0)
    net = CiterNet(pair[0].config.hidden_size).eval()
    with torch.no_grad():  # running statistics away from 0 and 1, so BatchNorm is not a no-op
        net.mlp[1].running_mean.normal_(0, 0.5)
        net.mlp[1].running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("citer")
    checkpoint.save(folder, net, {"kind": "citer", "hidden_size": 64, "threshold": 0.5})
    return Ckpt(str(folder), load_file(folder / "model.safetensors"))


def case(router: str, pair, r2r_ckpt: Ckpt, citer_ckpt: Ckpt) -> tuple[dict, Routing]:
    """model_args for ``router`` at a mid threshold, and the reference's rule for it."""
    embedding = pair[0].get_input_embeddings().weight.detach()
    return {
        # the coin's draws are the decoder's own: tokens and writers are checked, not decisions
        "random": ({"p": "0.3"}, Routing()),
        "entropy-token": (
            {"threshold": str(ENTROPY_TOKEN_TAU)},
            Routing(token=entropy_token_rule(ENTROPY_TOKEN_TAU)),
        ),
        "entropy": ({"threshold": str(STITCH_TAU)}, Routing(stitch=stitch_rule(STITCH_TAU))),
        "r2r": (
            {"router_ckpt": r2r_ckpt.folder, "threshold": str(R2R_THRESHOLD)},
            Routing(token=r2r_rule(r2r_ckpt.weights, embedding, R2R_THRESHOLD)),
        ),
        "citer": (
            {"router_ckpt": citer_ckpt.folder, "threshold": str(CITER_THRESHOLD)},
            Routing(token=citer_rule(citer_ckpt.weights, CITER_THRESHOLD)),
        ),
    }[router]


def runtime(pair, tokenizer, batch: int, **args: str) -> RoutedRuntime:
    """A runtime over the pair; at batch 8 the LLM runs once 3 rows wait, so rows still decoding
    ride along in its forwards and take its tokens from them (the cost rule waits for all 8 here)."""
    schedule = {"batch_size": str(batch), "llm_min_batch": "3" if batch > 1 else "0"}
    cfg = load_config({**COSTS, **schedule, **args})
    return build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tokenizer)


def requests(tokenizer) -> list[GenRequest]:
    return [GenRequest(tokenizer(p)["input_ids"], N_NEW, seed=i) for i, p in enumerate(PROMPTS)]


def generate_and_replay(rt: RoutedRuntime, tokenizer, plain, routing: Routing) -> Replay:
    """Generate every prompt greedily and replay each sample against the plain forwards."""
    reqs = requests(tokenizer)
    found = Replay()
    for i, (req, res) in enumerate(zip(reqs, rt.generate(reqs))):
        assert res.record.tokens == len(res.token_ids) > 0
        replay(
            *plain, req.prompt_ids, res.token_ids, res.record.llm_positions, routing, found, f"#{i}"
        )
    return found


def assert_meaningful(found: Replay) -> None:
    """The replay could have failed: both models wrote, and their argmaxes mostly differ there."""
    slm_positions = found.positions - found.llm_positions
    assert 0.1 * found.positions < found.llm_positions < 0.9 * found.positions, found
    assert found.differ_llm >= 0.5 * found.llm_positions, found
    assert found.differ_slm >= 0.5 * slm_positions, found
    assert found.ties <= 0.02 * found.positions, found


ROUTERS = ["random", "entropy-token", "entropy", "r2r", "citer"]


@pytest.mark.parametrize("engine", ["native", "hf"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("router", ROUTERS)
def test_every_position_is_its_writers_argmax_and_the_rules_choice(
    pair, tokenizer, plain, r2r_ckpt, citer_ckpt, router, batch, engine
):
    args, routing = case(router, pair, r2r_ckpt, citer_ckpt)
    rt = runtime(pair, tokenizer, batch, router=router, engine=engine, **args)
    assert rt.decoder.slm.kind == rt.decoder.llm.kind == engine
    found = generate_and_replay(rt, tokenizer, plain, routing)
    assert found.mismatches == []
    assert_meaningful(found)
    if router == "entropy":  # the LLM took control, kept it, and handed it back, several times
        assert found.takeovers >= 3 and found.handbacks >= 3 and found.kept >= 2, found
    if batch == 8:
        # rows took LLM tokens from forwards they rode along in: that path was replayed too
        assert rt.decoder.counters.taken_at_hand > 0


def test_guessed_positions_replay_as_if_the_row_had_waited(pair, tokenizer, plain):
    """Guessing ahead commits only what the LLM checked: the replay holds as for a waiting row."""
    tau = str(ENTROPY_TOKEN_TAU)
    rt = runtime(pair, tokenizer, 8, router="entropy-token", threshold=tau, guess_ahead="3")
    found = generate_and_replay(
        rt, tokenizer, plain, Routing(token=entropy_token_rule(ENTROPY_TOKEN_TAU))
    )
    assert found.mismatches == []
    assert_meaningful(found)
    assert rt.decoder.counters.guesses_checked > 0


# -- the replay has teeth: the decoder broken on purpose fails it -----------------------------------

Injection = Callable[[RoutedRuntime, pytest.MonkeyPatch], None]


def catch_up_skips_a_token(model: Model) -> Injection:
    """``model``'s catch-up over several tokens leaves the second out of its cache, which counts it
    as held (the SLM catches up over several tokens after an R-Stitch span: the LLM's tokens)."""

    def inject(rt: RoutedRuntime, monkeypatch) -> None:
        engine = rt.decoder.slm if model is Model.SLM else rt.decoder.llm
        forward = engine.forward

        def skipping(cache, rows, lengths, tokens, **kwargs):
            tokens = [
                t[:1] + t[2:] if held and len(t) > 1 else t for t, held in zip(tokens, lengths)
            ]
            return forward(cache, rows, lengths, tokens, **kwargs)

        monkeypatch.setattr(engine, "forward", skipping)

    return inject


def slm_cache_keeps_its_own_token(rt: RoutedRuntime, monkeypatch) -> None:
    """The SLM's cache gets the token it proposed at a position the LLM wrote, not the LLM's."""
    proposed: dict[int, int] = {}
    apply, unseen = MixedDecoder._apply, Row.unseen

    def remembering(self, rows, tokens, routed, outcomes):
        for row, token, result in zip(rows, tokens, outcomes):
            if result in (Outcome.WAIT, Outcome.TAKE):
                proposed[row.index] = token
        apply(self, rows, tokens, routed, outcomes)

    def stale(self, model):
        new = unseen(self, model)
        llm_wrote_last = self.tally.producers and self.tally.producers[-1] == Model.LLM.value
        if model is Model.SLM and new and llm_wrote_last and self.index in proposed:
            new = [*new[:-1], proposed[self.index]]
        return new

    monkeypatch.setattr(MixedDecoder, "_apply", remembering)
    monkeypatch.setattr(Row, "unseen", stale)


def decision_one_position_late(rt: RoutedRuntime, monkeypatch) -> None:
    """Each row's routing decision applies to its next position instead of this one."""
    earlier: dict[int, bool] = {}
    route = MixedDecoder._route

    def late(self, rows, decided):
        now = route(self, rows, decided)
        applied = [earlier.get(row.index, False) for row in rows]
        earlier.update({row.index: d for row, d in zip(rows, now)})
        return applied

    monkeypatch.setattr(MixedDecoder, "_route", late)


def hand_back_one_token_late(rt: RoutedRuntime, monkeypatch) -> None:
    """R-Stitch's LLM keeps control one token past where its rule hands it back."""
    earlier: dict[torch.Generator, bool] = {}  # the rule's answer at the row's previous LLM token
    keep_llm = rt.router.keep_llm

    def late(view):
        applied = []
        for gen, now in zip(view.gens, keep_llm(view).tolist()):  # a row's own routing generator
            answer = earlier.get(gen, True)  # a span's first LLM token has no earlier answer
            earlier[gen] = now
            if not answer:
                del earlier[gen]  # the span ends; the next one starts afresh
            applied.append(answer)
        return torch.tensor(applied)

    monkeypatch.setattr(rt.router, "keep_llm", late)


@dataclass(frozen=True)
class Bug:
    """A bug put into the decoder, the router it shows under, and what the replay reports."""

    inject: Injection
    router: str
    symptom: str


TOKEN_ARGMAX = "argmax"  # a token that is not its writer's argmax
WRONG_WRITER = "the rule gives it"  # a position the rule gives to the other model
BUGS = {
    "llm-catch-up-skips-a-token": Bug(
        catch_up_skips_a_token(Model.LLM), "entropy-token", TOKEN_ARGMAX
    ),
    "slm-catch-up-skips-an-llm-token": Bug(
        catch_up_skips_a_token(Model.SLM), "entropy", TOKEN_ARGMAX
    ),
    "slm-cache-keeps-its-own-token": Bug(
        slm_cache_keeps_its_own_token, "entropy-token", TOKEN_ARGMAX
    ),
    "decision-one-position-late": Bug(decision_one_position_late, "entropy-token", WRONG_WRITER),
    "hand-back-one-token-late": Bug(hand_back_one_token_late, "entropy", WRONG_WRITER),
}
RULES = {
    "entropy-token": (ENTROPY_TOKEN_TAU, Routing(token=entropy_token_rule(ENTROPY_TOKEN_TAU))),
    "entropy": (STITCH_TAU, Routing(stitch=stitch_rule(STITCH_TAU))),
}


@pytest.mark.parametrize("engine", ["native", "hf"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("bug", list(BUGS))
def test_a_broken_decoder_fails_the_replay(pair, tokenizer, plain, monkeypatch, bug, batch, engine):
    broken = BUGS[bug]
    tau, routing = RULES[broken.router]
    rt = runtime(pair, tokenizer, batch, router=broken.router, threshold=str(tau), engine=engine)
    broken.inject(rt, monkeypatch)
    found = generate_and_replay(rt, tokenizer, plain, routing)
    assert any(broken.symptom in m for m in found.mismatches), found.mismatches[:5]
