"""Train R2R's router on a label dataset (see ``r2r_labels``) and pick its threshold.

BCE-with-logits with pos_weight = n_neg / n_pos, AdamW (lr 5e-5, wd 5e-4), batch 1024, early stopping
on validation loss with the best weights kept. Validation holds whole responses (never tokens of a
response seen in training). The threshold is the lowest LLM rate whose recall of divergent validation
tokens is >= 0.95 over the sweep 0.01..0.99. The result is a checkpoint folder the ``r2r`` router loads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.r2r import R2RNet
from lm_eval_routed.training.common import load_shards
from lm_eval_routed.training.trainer import (
    Batch,
    TrainOptions,
    default_thresholds,
    fit_metrics,
    pick_threshold,
    split_groups,
    sweep,
    sweep_summary,
    train_binary,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class R2RArch:
    """Router sizes (the paper's: width 1024, 6 blocks, dropout 0.1; top-k comes from the data)."""

    width: int = 1024
    blocks: int = 6
    dropout: float = 0.1


def dataset_folder(folder: Path) -> Path:
    """The label dataset in ``folder`` (a dataset folder, or a label work folder holding one)."""
    if (folder / "dataset" / "meta.json").is_file():
        folder = folder / "dataset"
    if not (folder / "meta.json").is_file():
        raise ConfigError(
            f"{folder} is not an R2R label dataset (no meta.json); run train r2r-label"
        )
    return folder


def load_dataset(folder: Path) -> tuple[Batch, dict]:
    """The labelled rows and ``meta.json`` of a dataset folder (or of a label work folder)."""
    folder = dataset_folder(folder)
    meta_file = folder / "meta.json"
    data = load_shards(folder)
    data["label"] = data["label"].float()
    return data, json.loads(meta_file.read_text())


def split_by_response(data: Batch, val_frac: float, seed: int) -> tuple[Batch, Batch]:
    """(train, validation): whole responses go to one side, ``val_frac`` of them to validation."""
    too_few = "the dataset holds one response; label more queries to get a validation split"
    return split_groups(data, "response", val_frac, seed, too_few)


def frozen_embedding(slm) -> nn.Embedding:
    """A frozen copy of the SLM's input embedding (the router reads it; it is never stored)."""
    weight = slm.get_input_embeddings().weight.detach().float().cpu().clone()
    return nn.Embedding.from_pretrained(weight, freeze=True)


def r2r_scorer(embedding: nn.Embedding):
    """score(net, batch) -> logits, embedding the SLM token of each row."""

    def score(net: nn.Module, batch: Batch) -> Tensor:
        return net(batch["hidden"].float(), embedding(batch["token"]), batch["topk"].float())

    return score


def train_r2r(
    data_dir: Path,
    slm,
    out: Path,
    arch: R2RArch = R2RArch(),  # noqa: B008 (frozen dataclass: safe as a default)
    opts: TrainOptions = TrainOptions(),  # noqa: B008
    min_recall: float = 0.95,
    val_frac: float = 0.1,
    slm_ref: str = "slm",
) -> dict:
    """Train, pick the threshold, write the checkpoint folder ``out``; returns its config."""
    data, meta = load_dataset(data_dir)
    if meta["hidden_size"] != slm.config.hidden_size:
        raise ConfigError(
            f"the dataset was built with SLM hidden size {meta['hidden_size']}, "
            f"this SLM has {slm.config.hidden_size}; label with this SLM"
        )
    train, val = split_by_response(data, val_frac, opts.seed)
    n_pos = int(train["label"].sum())
    if n_pos == 0 or n_pos == len(train["label"]):
        raise ConfigError(
            "the training split needs both divergent and other tokens; label more queries"
        )
    pos_weight = (len(train["label"]) - n_pos) / n_pos
    torch.manual_seed(opts.seed)
    net = R2RNet(meta["hidden_size"], arch.width, arch.blocks, meta["top_k"], arch.dropout)
    score = r2r_scorer(frozen_embedding(slm))
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "train_state.pt"
    result = train_binary(net, score, train, val, opts, pos_weight, state_file)
    with torch.no_grad():
        probs = torch.sigmoid(score(net, val))
    points = sweep(probs, val["label"] > 0.5, default_thresholds())
    chosen, rule = pick_threshold(points, min_recall)
    config = {
        "kind": "r2r",
        "hidden_size": meta["hidden_size"],
        "vocab_size": meta["vocab_size"],
        "top_k": meta["top_k"],
        **asdict(arch),
        "slm": slm_ref,
        "threshold": chosen.threshold,
        "threshold_rule": rule,
        "data_fingerprint": meta["fingerprint"],
        "data": {k: meta[k] for k in ("rows", "tokens", "mismatch_rate", "divergent_rate")},
        "training": {**asdict(opts), "pos_weight": pos_weight, "val_frac": val_frac},
        "metrics": {
            **fit_metrics(result, chosen, train, val),
            "val_divergent": int(val["label"].sum()),
        },
        "sweep": sweep_summary(points),
    }
    checkpoint.save(out, net, config)
    state_file.unlink(missing_ok=True)  # finished: the folder ships weights and config only
    return config
