"""Binary router training shared by R2R and CITER, and the threshold sweep both use.

Training is BCE-with-logits (optionally with ``pos_weight``) under AdamW, early-stopped on validation
loss. The best epoch's weights are deep-copied when they are reached and put back at the end, so the
network returned is the best one, not the last (CITER's released script keeps a shallow dict copy,
whose tensors keep training in place). With a ``state_file`` every epoch is saved (weights, best
weights, optimiser, shuffling state) and a rerun continues from the last finished epoch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import save_atomic

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class TrainOptions:
    """Optimiser and stopping settings (R2R's: AdamW lr 5e-5, wd 5e-4, batch 1024)."""

    lr: float = 5e-5
    weight_decay: float = 5e-4
    batch_size: int = 1024
    max_epochs: int = 50
    patience: int = 5  # epochs without a better validation loss before stopping
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    """Where training ended: best epoch and its validation loss, and the per-epoch history."""

    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: tuple[tuple[float, float], ...]  # (train loss, validation loss) per epoch


def split_groups(
    data: Batch, column: str, val_frac: float, seed: int, too_few: str
) -> tuple[Batch, Batch]:
    """(train, validation): rows sharing a ``column`` value go to one side, ``val_frac`` of groups to
    validation; ``too_few`` is the error when there is a single group."""
    ids = data[column].unique()
    if len(ids) < 2:
        raise ConfigError(too_few)
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    n_val = min(max(1, round(val_frac * len(ids))), len(ids) - 1)
    is_val = torch.isin(data[column], order[:n_val])
    return {k: v[~is_val] for k, v in data.items()}, {k: v[is_val] for k, v in data.items()}


def _take(data: Batch, idx: Tensor) -> Batch:
    return {k: v[idx] for k, v in data.items()}


def _val_loss(net: nn.Module, score: Callable, data: Batch, loss_fn: nn.Module, bs: int) -> float:
    net.eval()
    total, n = 0.0, len(data["label"])
    with torch.no_grad():
        for i in range(0, n, bs):
            batch = _take(data, torch.arange(i, min(i + bs, n)))
            total += loss_fn(score(net, batch), batch["label"]).item() * len(batch["label"])
    return total / max(n, 1)


def train_binary(
    net: nn.Module,
    score: Callable[[nn.Module, Batch], Tensor],
    train: Batch,
    val: Batch,
    opts: TrainOptions,
    pos_weight: float | None = None,
    state_file: Path | None = None,
) -> TrainResult:
    """Train ``net`` (in place) so that ``score(net, batch)`` predicts ``batch['label']``; keep the best.

    ``train``/``val`` map column names to tensors with the same first dimension; ``label`` is 0/1.
    """
    weight = None if pos_weight is None else torch.tensor(pos_weight)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
    opt = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    gen = torch.Generator().manual_seed(opts.seed)
    best_state = copy.deepcopy(net.state_dict())
    best_val, best_epoch, bad, history = float("inf"), -1, 0, []
    if state_file is not None and state_file.is_file():
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        best_state, best_val = saved["best"], float(saved["best_val"])
        best_epoch, bad = int(saved["best_epoch"]), int(saved["bad"])
        history = [tuple(h) for h in saved["history"].tolist()]
        log.info("resuming training after epoch %d", len(history))
    n = len(train["label"])
    bar = tqdm(range(len(history), opts.max_epochs), desc="router epochs")
    for epoch in bar:
        if bad >= opts.patience:
            break
        net.train()
        order, total = torch.randperm(n, generator=gen), 0.0
        for i in range(0, n, opts.batch_size):
            idx = order[i : i + opts.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot train on one row
            batch = _take(train, idx)
            loss = loss_fn(score(net, batch), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_loss = _val_loss(net, score, val, loss_fn, opts.batch_size)
        history.append((total / max(n, 1), val_loss))
        if val_loss < best_val:
            # a deep copy: the live tensors keep changing as training goes on
            best_val, best_epoch, bad = val_loss, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            bad += 1
        bar.set_postfix(val=f"{val_loss:.4f}", best=f"{best_val:.4f}")
        if state_file is not None:
            _save_state(state_file, net, opt, gen, best_state, best_val, best_epoch, bad, history)
    net.load_state_dict(best_state)
    net.eval()
    return TrainResult(best_epoch, best_val, len(history), tuple(history))


def _save_state(path: Path, net, opt, gen, best, best_val, best_epoch, bad, history) -> None:
    state = {
        "net": net.state_dict(),
        "opt": opt.state_dict(),
        "gen": gen.get_state(),
        "best": best,
        "best_val": best_val,
        "best_epoch": best_epoch,
        "bad": bad,
        "history": torch.tensor(history, dtype=torch.float64).reshape(-1, 2),
    }
    save_atomic(path, lambda tmp: torch.save(state, tmp))


# -- thresholds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPoint:
    """Routing at one threshold: share of tokens sent to the LLM, recall and precision of positives."""

    threshold: float
    llm_rate: float
    recall: float
    precision: float


def sweep(
    probs: Tensor, positives: Tensor, thresholds: list[float], route_below: bool = False
) -> list[SweepPoint]:
    """Routing quality per threshold; a token is routed when prob >= t (or prob < t if ``route_below``).

    ``positives`` marks the tokens that should go to the LLM (R2R: divergent; CITER: label 0).
    """
    positives = positives.bool()
    points = []
    for t in thresholds:
        routed = probs < t if route_below else probs >= t
        hits = int((routed & positives).sum())
        points.append(
            SweepPoint(
                threshold=t,
                llm_rate=float(routed.float().mean()),
                recall=hits / max(int(positives.sum()), 1),
                precision=hits / max(int(routed.sum()), 1),
            )
        )
    return points


def default_thresholds() -> list[float]:
    """0.01, 0.02, ..., 0.99 (R2R's sweep)."""
    return [round(i / 100, 2) for i in range(1, 100)]


def pick_threshold(points: list[SweepPoint], min_recall: float) -> tuple[SweepPoint, str]:
    """The lowest LLM rate whose recall of positives is >= ``min_recall``; and the rule applied.

    Equal rates go to the higher recall, then to the first in sweep order. When no threshold reaches
    the recall, the one with the highest recall (then the lowest rate) is taken, and the rule says so.
    """
    ok = [p for p in points if p.recall >= min_recall]
    if ok:
        best = min(ok, key=lambda p: (p.llm_rate, -p.recall))
        return best, f"lowest LLM rate with recall >= {min_recall:g} on validation tokens"
    best = max(points, key=lambda p: (p.recall, -p.llm_rate))
    return best, f"recall {min_recall:g} not reached on validation tokens; highest recall taken"


def with_threshold_rule(point: SweepPoint, ndigits: int = 4) -> SweepPoint:
    """The same point with its figures rounded for a config file."""
    return replace(
        point,
        llm_rate=round(point.llm_rate, ndigits),
        recall=round(point.recall, ndigits),
        precision=round(point.precision, ndigits),
    )


def fit_metrics(result: TrainResult, chosen: SweepPoint, train: Batch, val: Batch) -> dict:
    """The validation figures a checkpoint config records about its training and threshold."""
    point = with_threshold_rule(chosen)
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "val_loss": round(result.best_val_loss, 5),
        "val_llm_rate": point.llm_rate,
        "val_recall": point.recall,
        "val_precision": point.precision,
        "train_rows": len(train["label"]),
        "val_rows": len(val["label"]),
    }


def sweep_summary(points: list[SweepPoint]) -> list[dict]:
    """Every fifth sweep point (0.05, 0.10, ...), rounded, for a config file."""
    return [asdict(with_threshold_rule(p)) for p in points[4::5]]
