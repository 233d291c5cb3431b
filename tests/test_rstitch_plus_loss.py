"""R-Stitch+'s reward and DAPO's loss on a batch small enough to work out by hand.

Each decision's old log-probability is log 0.5 and its new one log(0.5 r), so its ratio is exactly r.
"""

from __future__ import annotations

import math

import pytest
import torch

from lm_eval_routed.training.rstitch_plus import Rollout, advantages, dapo_loss, reward

SQRT_HALF = math.sqrt(0.5)


def rollout(group: int, reward_: float, ratios: list[float]) -> Rollout:
    old = torch.full((len(ratios),), math.log(0.5), dtype=torch.float64)
    new = (old + torch.tensor(ratios, dtype=torch.float64).log()).requires_grad_(True)
    return Rollout(group, reward_, new, old)


def batch() -> list[Rollout]:
    return [
        # group 0: rewards 1, 0, 0.5: mean 0.5, std (Bessel) sqrt((0.25 + 0.25 + 0) / 2) = 0.5,
        # advantages +1, -1, 0
        rollout(0, 1.0, [1.5, 1.1]),  # 1.5 clipped to 1.28 (A > 0): 1.28; 1.1: 1.1
        rollout(
            0, 0.0, [0.5, 0.9, 1.2]
        ),  # A < 0: -max(r, clip r): 0.5 -> -0.8 (clipped), -0.9, -1.2
        rollout(0, 0.5, [2.0]),  # A = 0: 0
        # group 1: equal rewards, dropped whatever its ratios
        rollout(1, 0.7, [3.0, 3.0]),
        rollout(1, 0.7, [0.1]),
        # group 2: rewards 1, 0: mean 0.5, std sqrt(0.5), advantages +-sqrt(0.5)
        rollout(2, 1.0, [0.5]),  # A > 0, r below the clip: min(0.5 A, 0.8 A) = 0.5 A
        rollout(
            2, 0.0, [1.5, 1.0]
        ),  # A < 0: -1.5 sqrt(0.5) (not clipped: max(1.5, 1.28)); -sqrt(0.5)
    ]


# the nine decisions of the kept groups, averaged token-level
HAND_OBJECTIVES = [1.28, 1.1, -0.8, -0.9, -1.2, 0.0, 0.5 * SQRT_HALF, -1.5 * SQRT_HALF, -SQRT_HALF]
HAND_LOSS = -sum(HAND_OBJECTIVES) / 9


def test_advantages_are_normalised_within_each_group_and_equal_groups_dropped():
    adv, dropped = advantages(batch())
    want = [1.0, -1.0, 0.0, None, None, SQRT_HALF, -SQRT_HALF]
    assert dropped == 1
    assert [a is None for a in adv] == [w is None for w in want]
    assert [a for a in adv if a is not None] == pytest.approx(
        [w for w in want if w is not None], rel=1e-5, abs=1e-9
    )


def test_the_loss_matches_the_hand_computed_batch():
    out = dapo_loss(batch())
    assert out.loss.item() == pytest.approx(HAND_LOSS, rel=1e-5)
    assert (out.decisions, out.kept_groups, out.dropped_groups) == (9, 2, 1)
    assert out.clipped == pytest.approx(2 / 9)  # 1.5 at A = +1 and 0.5 at A = -1


def test_clipped_decisions_pass_no_gradient_and_the_others_their_ratio():
    rollouts = batch()
    dapo_loss(rollouts).loss.backward()
    grads = [r.logp.grad for r in rollouts]
    # d(-mean(r A))/d logp = -r A / 9 where the ratio is not held by the clip; 0 where it is
    assert grads[0].tolist() == pytest.approx([0.0, -1.1 / 9], rel=1e-5)
    assert grads[1].tolist() == pytest.approx([0.0, 0.9 / 9, 1.2 / 9], rel=1e-5)
    assert grads[5].tolist() == pytest.approx([-0.5 * SQRT_HALF / 9], rel=1e-5)
    assert grads[6].tolist() == pytest.approx([1.5 * SQRT_HALF / 9, SQRT_HALF / 9], rel=1e-5)
    assert grads[3] is None and grads[4] is None  # a dropped group is not in the graph at all


def test_a_batch_of_equal_groups_has_nothing_to_learn():
    out = dapo_loss([rollout(0, 1.0, [1.0]), rollout(0, 1.0, [2.0]), rollout(1, 0.0, [1.0])])
    assert out.loss.item() == 0.0 and out.decisions == 0 and out.dropped_groups == 2


def test_the_reward_charges_latency_only_to_a_right_answer():
    assert reward(True, 1000.0, 5e-6) == pytest.approx(1.0 - 5e-3)
    assert reward(True, 0.0, 5e-6) == 1.0
    assert reward(False, 1000.0, 5e-6) == 0.0
