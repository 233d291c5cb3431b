"""Router training rules: the best validation epoch is what comes back, resumes, threshold choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lm_eval_routed.training.trainer import (
    TrainOptions,
    default_thresholds,
    pick_threshold,
    sweep,
    train_binary,
)


def _data(seed: int, n: int = 256, flip: bool = False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    label = (x[:, 0] > 0).float()
    return {"x": x, "label": 1 - label if flip else label}


def _net():
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def _score(net, batch):
    return net(batch["x"]).squeeze(-1)


# validation labels are the training labels flipped: validation loss rises once training learns
TRAIN, VAL = _data(1), _data(2, flip=True)
OPTS = TrainOptions(lr=0.05, batch_size=32, max_epochs=6, patience=100)


def test_best_epoch_weights_come_back_not_the_last():
    net = _net()
    result = train_binary(net, _score, TRAIN, VAL, OPTS)
    vals = [v for _, v in result.history]
    assert result.best_epoch == vals.index(min(vals)) and result.best_val_loss == min(vals)
    assert result.epochs_run == 6 and result.best_epoch < 5  # the last epoch is worse
    # the same training stopped right after the best epoch ends with exactly those weights
    short = _net()
    train_binary(
        short,
        _score,
        TRAIN,
        VAL,
        TrainOptions(**{**OPTS.__dict__, "max_epochs": result.best_epoch + 1}),
    )
    assert torch.equal(net.weight, short.weight) and torch.equal(net.bias, short.bias)
    last = _net()  # and they differ from the final epoch's weights
    train_binary(last, _score, TRAIN, _data(2), OPTS)  # a validation set that keeps improving
    assert not torch.equal(net.weight, last.weight)


def test_patience_stops_early():
    result = train_binary(
        _net(), _score, TRAIN, VAL, TrainOptions(**{**OPTS.__dict__, "patience": 1})
    )
    assert result.epochs_run == result.best_epoch + 2


def test_resume_continues_to_the_same_weights(tmp_path):
    straight = _net()
    train_binary(straight, _score, TRAIN, _data(2), OPTS)
    state = tmp_path / "state.pt"
    resumed = _net()
    train_binary(
        resumed,
        _score,
        TRAIN,
        _data(2),
        TrainOptions(**{**OPTS.__dict__, "max_epochs": 3}),
        state_file=state,
    )
    fresh = _net()  # a new process: only the state file carries over
    result = train_binary(fresh, _score, TRAIN, _data(2), OPTS, state_file=state)
    assert result.epochs_run == 6
    torch.testing.assert_close(fresh.weight, straight.weight)


def test_threshold_with_a_known_answer():
    # 20 divergent tokens at 0.3/0.5/0.7/0.9 (5 each), 30 others at 0.1 and 0.45 (15 each)
    probs = torch.tensor([0.3, 0.5, 0.7, 0.9] * 5 + [0.1, 0.45] * 15)
    positives = torch.tensor([True] * 20 + [False] * 30)
    points = sweep(probs, positives, default_thresholds())
    chosen, rule = pick_threshold(points, min_recall=0.75)
    # recall >= 0.75 needs the 0.5 group: t in (0.45, 0.5] routes 15 tokens; 0.5 is in the sweep
    assert chosen.threshold == pytest.approx(0.46)  # lowest rate reached first at 0.46 (rate 15/50)
    assert chosen.llm_rate == pytest.approx(15 / 50) and chosen.recall == pytest.approx(0.75)
    assert chosen.precision == pytest.approx(1.0) and "recall >= 0.75" in rule
    at_05 = next(p for p in points if p.threshold == 0.5)
    assert at_05.llm_rate == chosen.llm_rate  # every t in (0.45, 0.5] routes the same tokens
    # recall 0.76 needs the 0.3 group too, which lets the 0.45 negatives through: t in (0.1, 0.3]
    chosen, rule = pick_threshold(points, min_recall=0.76)
    assert chosen.threshold == pytest.approx(0.11) and chosen.recall == 1.0
    assert chosen.llm_rate == pytest.approx(35 / 50)
    chosen, _ = pick_threshold(sweep(probs, positives, [0.95]), min_recall=0.5)
    assert chosen.recall == 0.0  # nothing reaches the target: the best recall is taken


def test_route_below_for_confidence_scores():
    conf = torch.tensor([0.2, 0.8, 0.95, 0.6])
    needs_llm = torch.tensor([True, False, False, True])
    (point,) = sweep(conf, needs_llm, [0.7], route_below=True)
    assert (point.llm_rate, point.recall, point.precision) == (0.5, 1.0, 1.0)
