"""The decode step's pieces on their own: each row's outcome, a row's coordinates, settling guesses."""

from __future__ import annotations

import itertools

import pytest
import torch

from lm_eval_routed.core.accounting import Model
from lm_eval_routed.core.counters import RunCounters
from lm_eval_routed.core.guesses import Guessing
from lm_eval_routed.core.outcome import Outcome, RowFacts, outcome
from lm_eval_routed.core.riding import Riding
from lm_eval_routed.core.rows import GenRequest, Prediction, Row

COMMIT, WAIT, TAKE, GUESS = Outcome.COMMIT, Outcome.WAIT, Outcome.TAKE, Outcome.GUESS

# routed, at hand, guessing pays, holds unchecked tokens -> outcome (outcome.py's table, every row)
TABLE = {
    (False, False, False, False): COMMIT,
    (False, False, False, True): GUESS,  # after a guess nothing is committed before the check
    (False, False, True, False): COMMIT,
    (False, False, True, True): GUESS,
    (False, True, False, False): COMMIT,  # a prediction at hand is for routed positions only
    (False, True, True, False): COMMIT,
    (True, False, False, False): WAIT,
    (True, False, False, True): WAIT,  # guessing stopped paying: the row waits with its guesses
    (True, False, True, False): GUESS,
    (True, False, True, True): GUESS,
    (True, True, False, False): TAKE,
    (True, True, True, False): TAKE,  # the LLM's token is known: no need to guess it
}


@pytest.mark.parametrize("facts,want", TABLE.items(), ids=[str(f) for f in TABLE])
def test_each_rows_outcome(facts, want):
    assert outcome(RowFacts(*facts)) is want


def test_the_table_covers_every_state_a_row_can_be_in():
    # a prediction is at hand only while the row holds no unchecked tokens (Riding.at_hand)
    possible = {f for f in itertools.product([False, True], repeat=4) if not (f[1] and f[3])}
    assert set(TABLE) == possible


def row(prompt: int = 3, committed: int = 2, budget: int = 10) -> Row:
    req = GenRequest(prompt_ids=list(range(1, prompt + 1)), max_new_tokens=budget)
    seq = list(req.prompt_ids) + [50 + i for i in range(committed)]
    return Row(0, req, 0, seq, torch.Generator(), torch.Generator())


def test_where_the_llm_is_asked_and_what_it_is_fed():
    r = row()  # 5 committed tokens (3 prompt + 2)
    r.cached[Model.LLM] = 3
    assert r.unseen(Model.LLM) == [50, 51]
    assert r.asked() == [1]  # the last fed token predicts the next position
    r.unchecked.tokens, r.unchecked.guesses = [60, 61, 62], [0, 2]  # guesses at positions 5 and 7
    assert r.unseen(Model.LLM) == [50, 51, 60, 61, 62]
    # position 5 is predicted by fed index 1 (position 4), position 7 by fed index 3
    assert r.asked() == [1, 3]
    r.cached[Model.SLM] = 6  # the SLM holds one unchecked token already
    assert r.unseen(Model.SLM) == [61, 62]


def test_a_prediction_is_at_hand_only_for_the_position_it_predicted():
    r = row()
    assert not Riding.at_hand(r)
    r.prediction = Prediction(len(r.seq), torch.zeros(4), torch.zeros(2))
    assert Riding.at_hand(r)
    r.unchecked.tokens = [7]
    assert not Riding.at_hand(r)
    r.unchecked.tokens = []
    r.seq.append(9)  # the row moved on: the prediction is stale
    assert not Riding.at_hand(r)


def guessed(route_gen: torch.Generator) -> tuple[Row, Guessing, list[torch.Tensor]]:
    """A row holding 4 unchecked tokens, guesses at the first and the third."""
    r = row()
    r.route_gen = route_gen
    guessing, states = Guessing(limit=4), []
    for token, routed in zip([60, 61, 62, 63], [True, False, True, False]):
        if routed:
            states.append(route_gen.get_state())
        r.waiting = guessing.hold(r, token, routed, ends=False)
        torch.rand((), generator=route_gen)  # the router draws after each position
    return r, guessing, states


def test_settling_right_guesses_commits_every_token():
    r, guessing, _ = guessed(torch.Generator().manual_seed(0))
    assert r.waiting  # it holds as many tokens as it may
    counters = RunCounters()
    commits = guessing.settle(r, [60, 62], counters)
    assert commits == [(60, Model.LLM), (61, Model.SLM), (62, Model.LLM), (63, Model.SLM)]
    assert (counters.guesses_right, counters.guesses_checked) == (2, 2)
    assert r.unchecked.tokens == [] and r.unchecked.guesses == []


def test_a_wrong_guess_keeps_what_came_before_it_and_rewinds_the_router():
    gen = torch.Generator().manual_seed(0)
    r, guessing, states = guessed(gen)
    counters = RunCounters()
    commits = guessing.settle(r, [60, 99], counters)  # the LLM writes 99 where the SLM guessed 62
    assert commits == [(60, Model.LLM), (61, Model.SLM), (99, Model.LLM)]
    assert (counters.guesses_right, counters.guesses_checked) == (1, 2)
    assert torch.equal(gen.get_state(), states[1])  # as it stood when position 7 was routed


def test_guesses_stop_while_they_do_not_pay():
    r, guessing, counters = row(), Guessing(limit=4), RunCounters()
    assert guessing.pays(r, counters)  # a prior of 1/2
    for _ in range(6):
        counters.count_guess(False)
    assert not guessing.pays(r, counters)  # (0 + 2) / (6 + 4) < 0.4
    assert not Guessing(limit=0).pays(row(), RunCounters())


def test_a_guessing_row_waits_at_its_limit_at_an_ending_token_or_at_its_budget():
    guessing = Guessing(limit=3)
    r = row(budget=10)
    assert [guessing.hold(r, t, routed=t == 60, ends=False) for t in (60, 61, 62)] == [
        False,
        False,
        True,
    ]
    assert guessing.hold(row(), 60, routed=True, ends=True)  # a row only ends on checked tokens
    near_end = row(committed=8, budget=10)  # room for two more tokens
    assert [guessing.hold(near_end, t, routed=True, ends=False) for t in (60, 61)] == [False, True]
