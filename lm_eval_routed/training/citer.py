"""CITER's router training (arXiv 2502.01976): token labels from a reference solution, relabel rounds.

Labels, per position t of a reference solution teacher-forced through both models:
  SLM top-1 == reference token -> 1 (the cheap model is fine here);
  else LLM top-1 == reference token -> 0 (the LLM is needed);
  else both are wrong: roll out from prefix + the SLM's token to the end and label by whether the final
  answer is correct (a task-supplied ``checker(text, row) -> bool``).
Round 0 rolls out with the SLM alone; each later round rolls the both-wrong positions out again under
the router trained in the round before (the mixed decoder, SLM + LLM), then retrains. Training is BCE
with the best validation epoch kept; the threshold comes from a sweep (LLM if confidence < threshold).

Work folder: ``features.safetensors`` (hidden, slm_token, llm_token, ref_token, sample, position),
``rollouts-r{k}.jsonl`` (resumable rollout labels of round k), ``router-r{k}/`` (round k's checkpoint).
"""

from __future__ import annotations

import importlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.models import eos_ids
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.citer import CiterNet
from lm_eval_routed.training.common import (
    JsonlLog,
    batched,
    encode_prompt,
    fingerprint,
    forward_features,
    save_shard,
)
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

SLM_RIGHT, LLM_RIGHT, BOTH_WRONG = 0, 1, 2  # how a position got its label
Checker = Callable[[str, dict], bool]


@dataclass(frozen=True)
class CiterOptions:
    """Knobs of CITER labelling and training (training defaults are ours: the paper gives none)."""

    prompt_field: str = "prompt"
    reference_field: str = "reference"
    chat: bool = True
    rollout_tokens: int = 256
    stop: tuple[str, ...] = ()
    max_rollouts: int = 32  # per sample; further both-wrong positions are dropped
    batch_size: int = 8
    rounds: int = 2
    min_recall: float = 0.95
    val_frac: float = 0.2


def load_checker(ref: str) -> Checker:
    """Import ``module:function`` as the answer checker."""
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"checker {ref!r} not found; give module:function") from None


def first_line_match(text: str, row: dict) -> bool:
    """Checker: the first line of ``text`` equals ``row['answer']`` (case, spaces, final . or ! aside)."""

    def norm(s: str) -> str:
        return " ".join(s.strip().strip(".!").lower().split())

    return norm(text.strip().split("\n")[0]) == norm(str(row["answer"]))


def shortcut_kinds(
    ref: torch.Tensor, slm_top1: torch.Tensor, llm_top1: torch.Tensor
) -> torch.Tensor:
    """Per position: SLM_RIGHT, else LLM_RIGHT, else BOTH_WRONG (needs a rollout)."""
    kinds = torch.full_like(ref, BOTH_WRONG)
    kinds[llm_top1 == ref] = LLM_RIGHT
    kinds[slm_top1 == ref] = SLM_RIGHT  # the cheap model wins a tie
    return kinds


def step_features(workdir: Path, slm, llm, tok, rows: list[dict], opts: CiterOptions) -> dict:
    """Teacher-force prompt + reference through both models; cached in ``features.safetensors``."""
    path = workdir / "features.safetensors"
    if path.is_file():
        return load_file(path)
    cols: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("hidden", "slm_token", "llm_token", "ref_token", "sample", "position")
    }
    for start in tqdm(range(0, len(rows), opts.batch_size), desc="teacher forcing"):
        batch = rows[start : start + opts.batch_size]
        prompts = [encode_prompt(tok, r[opts.prompt_field], opts.chat) for r in batch]
        refs = [tok(r[opts.reference_field], add_special_tokens=False)["input_ids"] for r in batch]
        seqs = [p + r for p, r in zip(prompts, refs)]
        hidden, slm_logits = forward_features(slm, seqs)
        _, llm_logits = forward_features(llm, seqs)
        for b, (p, r) in enumerate(zip(prompts, refs)):
            span = slice(len(p) - 1, len(p) - 1 + len(r))  # positions that predict reference tokens
            cols["hidden"].append(hidden[b, span].float())
            cols["slm_token"].append(slm_logits[b, span].argmax(-1))
            cols["llm_token"].append(llm_logits[b, span].argmax(-1))
            cols["ref_token"].append(torch.tensor(r))
            cols["sample"].append(torch.full((len(r),), start + b))
            cols["position"].append(torch.arange(len(r)))
    feats = {k: torch.cat(v) for k, v in cols.items()}
    save_shard(path, feats)
    return feats


def rollout_targets(feats: dict, max_rollouts: int) -> list[tuple[int, int, int]]:
    """(sample, position, SLM token) of the both-wrong positions, at most ``max_rollouts`` per sample."""
    kinds = shortcut_kinds(feats["ref_token"], feats["slm_token"], feats["llm_token"])
    seen: dict[int, int] = {}
    out = []
    for i in (kinds == BOTH_WRONG).nonzero().flatten().tolist():
        s = int(feats["sample"][i])
        seen[s] = seen.get(s, 0) + 1
        if seen[s] <= max_rollouts:
            out.append((s, int(feats["position"][i]), int(feats["slm_token"][i])))
    return out


def step_rollouts(
    workdir: Path,
    k: int,
    runtime,
    rows: list[dict],
    feats: dict,
    checker: Checker,
    opts: CiterOptions,
) -> JsonlLog:
    """Round ``k``'s rollout labels: prefix + SLM token, decoded by ``runtime`` to the end, checked.

    A row may carry its own ``rollout_tokens`` and ``stop`` (rows of several formats in one run);
    otherwise ``opts``' apply.
    """
    from lm_eval_routed.core.rows import GenRequest

    tok = runtime.tokenizer
    book = JsonlLog(workdir / f"rollouts-r{k}.jsonl", ("sample", "position"))
    eos = eos_ids(tok, runtime.llm)
    todo = [t for t in rollout_targets(feats, opts.max_rollouts) if t[:2] not in book]
    for chunk in tqdm(
        list(batched(todo, opts.batch_size)), desc=f"rollouts r{k}", disable=not todo
    ):
        heads, reqs = [], []
        for s, t, token in chunk:
            row = rows[s]
            ref = tok(row[opts.reference_field], add_special_tokens=False)["input_ids"]
            prompt = encode_prompt(tok, row[opts.prompt_field], opts.chat)
            heads.append(tok.decode(ref[:t] + [token], skip_special_tokens=True))
            budget, stop = (
                row.get("rollout_tokens", opts.rollout_tokens),
                row.get("stop", opts.stop),
            )
            reqs.append(GenRequest(prompt + ref[:t] + [token], budget, tuple(stop)))
        live = [i for i, (_, _, token) in enumerate(chunk) if token not in eos]
        texts = list(heads)
        for i, res in zip(live, runtime.generate([reqs[i] for i in live])):
            texts[i] = heads[i] + res.text
        book.extend(
            {"sample": s, "position": t, "label": int(bool(checker(text, rows[s]))), "text": text}
            for (s, t, _), text in zip(chunk, texts)
        )
    return book


def round_labels(feats: dict, book: JsonlLog) -> Batch:
    """The labelled rows of a round: shortcut labels plus the rollouts' (unrolled positions dropped)."""
    kinds = shortcut_kinds(feats["ref_token"], feats["slm_token"], feats["llm_token"])
    label = (kinds == SLM_RIGHT).float()
    keep = kinds != BOTH_WRONG
    for i in (kinds == BOTH_WRONG).nonzero().flatten().tolist():
        rec = book.records.get((int(feats["sample"][i]), int(feats["position"][i])))
        if rec is not None:
            label[i], keep[i] = float(rec["label"]), True
    return {
        "hidden": feats["hidden"][keep],
        "label": label[keep],
        "kind": kinds[keep],
        "sample": feats["sample"][keep],
    }


def split_by_sample(data: Batch, val_frac: float, seed: int) -> tuple[Batch, Batch]:
    """(train, validation) with whole samples on one side."""
    too_few = "CITER training needs at least two samples (one for validation)"
    return split_groups(data, "sample", val_frac, seed, too_few)


def _score(net: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return net(batch["hidden"].float())


def train_round(
    data: Batch,
    out: Path,
    hidden_size: int,
    vocab: int,
    opts: CiterOptions,
    train_opts: TrainOptions,
    extra: dict,
) -> dict:
    """Train a CITER router on one round's labels, sweep its threshold, write checkpoint ``out``."""
    train, val = split_by_sample(data, opts.val_frac, train_opts.seed)
    if train["label"].unique().numel() < 2:
        raise ConfigError("CITER labels of the training split are all one class; add samples")
    torch.manual_seed(train_opts.seed)
    net = CiterNet(hidden_size)
    out.mkdir(parents=True, exist_ok=True)
    result = train_binary(net, _score, train, val, train_opts, None, out / "train_state.pt")
    with torch.no_grad():
        conf = torch.sigmoid(_score(net, val))
    points = sweep(conf, val["label"] < 0.5, default_thresholds(), route_below=True)
    chosen, rule = pick_threshold(points, opts.min_recall)
    config = {
        "kind": "citer",
        "hidden_size": hidden_size,
        "vocab_size": vocab,
        "threshold": chosen.threshold,
        "threshold_rule": rule.replace("recall", "recall of LLM-needed tokens"),
        **extra,
        "training": asdict(train_opts),
        "metrics": {
            **fit_metrics(result, chosen, train, val),
            "label_slm_share": round(float(data["label"].mean()), 4),
        },
        "sweep": sweep_summary(points),
    }
    checkpoint.save(out, net, config)
    (out / "train_state.pt").unlink(missing_ok=True)
    return config


def _runtime(slm, llm, tok, router_dir: Path | None, opts: CiterOptions):
    from lm_eval_routed.config_args import load_config
    from lm_eval_routed.loading.runtime import build_runtime

    args = {"cost_slm": "0:0", "cost_llm": "0:0", "batch_size": opts.batch_size}
    if router_dir is None:
        args["router"] = "slm-only"
    else:
        args |= {"router": "citer", "router_ckpt": str(router_dir)}
    return build_runtime(load_config(args), slm=slm, llm=llm, tokenizer=tok)


def run_citer(
    workdir: Path,
    slm,
    llm,
    tok,
    rows: list[dict],
    checker: Checker,
    opts: CiterOptions,
    train_opts: TrainOptions,
    out: Path | None = None,
    label_only: bool = False,
    slm_ref: str = "slm",
) -> dict:
    """Label (round 0) and, unless ``label_only``, train ``opts.rounds`` rounds; copy the last to ``out``."""
    workdir.mkdir(parents=True, exist_ok=True)
    feats = step_features(workdir, slm, llm, tok, rows, opts)
    vocab = slm.get_input_embeddings().weight.shape[0]
    config: dict = {}
    for k in range(opts.rounds):
        router_dir = workdir / f"router-r{k}"
        previous = workdir / f"router-r{k - 1}" if k else None
        book = step_rollouts(
            workdir, k, _runtime(slm, llm, tok, previous, opts), rows, feats, checker, opts
        )
        data = round_labels(feats, book)
        stats = _label_stats(feats, data, book)
        log.info("CITER round %d labels: %s", k, stats)
        if label_only:
            return stats
        if (router_dir / "config.json").is_file():
            continue  # this round is trained already
        extra = {
            "slm": slm_ref,
            "round": k,
            "data_fingerprint": fingerprint([workdir / "features.safetensors", book.path]),
            "data": stats,
        }
        config = train_round(
            data, router_dir, slm.config.hidden_size, vocab, opts, train_opts, extra
        )
    last = workdir / f"router-r{opts.rounds - 1}"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(last / name, out / name)
    return config or checkpoint.load(str(last), "citer")[0]


def _label_stats(feats: dict, data: Batch, book: JsonlLog) -> dict:
    kinds = shortcut_kinds(feats["ref_token"], feats["slm_token"], feats["llm_token"])
    return {
        "positions": len(kinds),
        "slm_right": int((kinds == SLM_RIGHT).sum()),
        "llm_right": int((kinds == LLM_RIGHT).sum()),
        "both_wrong": int((kinds == BOTH_WRONG).sum()),
        "rolled_out": len(book.records),
        "rows": len(data["label"]),
        "label_one_share": round(float(data["label"].mean()), 4) if len(data["label"]) else 0.0,
    }
