"""`lm-eval-routed train ...`: build router labels and train routers (every step resumable).

    train r2r-label  --slm REF --llm REF [--verifier REF] --queries FILE|DATASET --workdir DIR
    train r2r        --slm REF --data DIR --out router_ckpts/NAME
    train citer-label --slm REF --llm REF --data FILE --checker MOD:FN --workdir DIR
    train citer      --slm REF --llm REF --data FILE --checker MOD:FN --workdir DIR --out router_ckpts/NAME
    train rstitch-plus --config CFG --data FILE --checker MOD:FN --workdir DIR --out router_ckpts/NAME

A model REF is a hub id, a local folder, a ``.gguf`` file, or ``demo:slm`` / ``demo:llm``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.models import load_pair_model
from lm_eval_routed.training.common import claim_workdir, fingerprint, load_rows, pick_field
from lm_eval_routed.training.trainer import TrainOptions

log = logging.getLogger(__name__)


def _models(p: argparse.ArgumentParser, llm: bool = True) -> None:
    p.add_argument("--slm", required=True, help="SLM: hub id, folder, .gguf or demo:slm")
    if llm:
        p.add_argument("--llm", required=True, help="LLM of the same tokenizer")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument(
        "--no-chat", action="store_true", help="use prompts as raw text (no chat template)"
    )
    p.add_argument("--batch-size", type=int, default=8)


def _training(p: argparse.ArgumentParser, lr: float, wd: float, batch: int) -> None:
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=wd)
    p.add_argument("--train-batch", type=int, default=batch)
    p.add_argument("--epochs", type=int, default=50, help="most epochs")
    p.add_argument(
        "--patience", type=int, default=5, help="epochs without a better validation loss"
    )
    p.add_argument("--min-recall", type=float, default=0.95, help="recall the threshold must keep")
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lm-eval-routed train", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="what", required=True)
    p = sub.add_parser("r2r-label", help="R2R labels: responses, features, continuations, verdicts")
    _models(p)
    p.add_argument("--verifier", help="judge model (default: the LLM)")
    p.add_argument("--queries", required=True, help="JSONL file or datasets id (name[:config])")
    p.add_argument("--split", default="train")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--limit", type=int)
    p.add_argument("--workdir", required=True)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--stop", action="append", default=[], help="string that ends a response")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--cont-tokens", type=int, default=32)
    p = sub.add_parser("r2r", help="train the R2R router on a label dataset")
    _models(p, llm=False)
    p.add_argument("--data", required=True, help="r2r-label work folder (or its dataset/)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--dropout", type=float, default=0.1)
    _training(p, 5e-5, 5e-4, 1024)
    for name in ("citer-label", "citer"):
        p = sub.add_parser(name, help="CITER labels" if name == "citer-label" else "CITER rounds")
        _models(p)
        p.add_argument(
            "--data", required=True, help="JSONL/datasets id with prompt, reference, answer"
        )
        p.add_argument("--split", default="train")
        p.add_argument("--prompt-field", default="prompt")
        p.add_argument("--reference-field", default="reference")
        p.add_argument("--limit", type=int)
        p.add_argument("--checker", default="lm_eval_routed.training.citer:first_line_match")
        p.add_argument("--workdir", required=True)
        p.add_argument("--rollout-tokens", type=int, default=256)
        p.add_argument("--stop", action="append", default=[])
        p.add_argument("--max-rollouts", type=int, default=32)
        p.add_argument("--rounds", type=int, default=2)
        if name == "citer":
            p.add_argument("--out", required=True)
            _training(p, 1e-4, 0.0, 256)
    _rstitch_plus_parser(sub)
    return top


def _rstitch_plus_parser(sub) -> None:
    from lm_eval_routed.training.rstitch_train import RStitchPlusOptions

    d = RStitchPlusOptions()
    p = sub.add_parser("rstitch-plus", help="R-Stitch+'s router by RL (DAPO) on answer rewards")
    p.add_argument("--config", help="config file or preset naming the pair (as config= takes)")
    p.add_argument("--model-args", default="", help="k=v,... over the config (slm=, llm=, device=)")
    p.add_argument("--data", required=True, help="JSONL/datasets id with the prompts (and answers)")
    p.add_argument("--split", default="train")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--limit", type=int)
    p.add_argument("--no-chat", action="store_true", help="use prompts as raw text")
    p.add_argument("--checker", required=True, help="MOD:FN, FN(text, row) -> bool")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--latency", help="latency model JSON (default: fitted on the run's engines)")
    p.add_argument("--threshold", type=float, default=d.threshold, help="tau, normalized entropy")
    p.add_argument("--lam", type=float, default=d.lam, help="lambda, per second of L-hat")
    p.add_argument("--group", type=int, default=d.group, help="rollouts per prompt")
    p.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--updates", type=int, default=d.updates, help="gradient steps per batch")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument(
        "--init-switch",
        type=float,
        default=d.init_switch,
        help="the policy's switch probability before training, at every consulted position",
    )
    p.add_argument("--width", type=int, default=d.width, help="the policy's hidden width")
    p.add_argument("--context-scale", type=float, default=d.context_scale)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--stop", action="append", default=[], help="string that ends a response")
    p.add_argument("--batch-size", type=int, default=16, help="rows decoded at once")
    p.add_argument("--seed", type=int, default=d.seed)


def _train_opts(args) -> TrainOptions:
    return TrainOptions(
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.train_batch,
        max_epochs=args.epochs,
        patience=args.patience,
        seed=args.seed,
    )


def r2r_label(args) -> dict:
    """Run (or resume) the R2R label pipeline."""
    from lm_eval_routed.loading.models import check_same_vocab
    from lm_eval_routed.training.r2r_labels import LabelOptions, build_labels

    rows = load_rows(args.queries, args.split, args.limit)
    prompts = pick_field(rows, args.prompt_field, args.queries)
    # what the labels depend on: a resumed folder made under other settings is refused
    claim_workdir(
        Path(args.workdir),
        "r2r-label",
        {
            "slm": args.slm,
            "llm": args.llm,
            "verifier": args.verifier or "the LLM",
            "max_new_tokens": args.max_new_tokens,
            "stop": list(args.stop),
            "top_k": args.top_k,
            "cont_tokens": args.cont_tokens,
            "chat": not args.no_chat,
            "dtype": args.dtype,
        },
    )
    llm, tok = load_pair_model(args.llm, args.dtype, args.device)
    slm, slm_tok = load_pair_model(args.slm, args.dtype, args.device)
    check_same_vocab(slm_tok, tok, args.slm, args.llm)
    judge = load_pair_model(args.verifier, args.dtype, args.device) if args.verifier else None
    opts = LabelOptions(
        max_new_tokens=args.max_new_tokens,
        stop=tuple(args.stop),
        top_k=args.top_k,
        cont_tokens=args.cont_tokens,
        batch_size=args.batch_size,
        chat=not args.no_chat,
    )
    return build_labels(Path(args.workdir), slm, llm, tok, prompts, opts, judge, args.slm)


def r2r(args) -> dict:
    """Train the R2R router."""
    from lm_eval_routed.training.r2r_train import R2RArch, dataset_folder, train_r2r

    dataset_folder(Path(args.data))  # a wrong --data fails before the SLM loads
    slm, _ = load_pair_model(args.slm, args.dtype, args.device)
    arch = R2RArch(args.width, args.blocks, args.dropout)
    return train_r2r(
        Path(args.data),
        slm,
        Path(args.out),
        arch,
        _train_opts(args),
        args.min_recall,
        args.val_frac,
        args.slm,
    )


def citer(args, label_only: bool) -> dict:
    """CITER: round-0 labels only, or every round of labels and training."""
    from lm_eval_routed.loading.models import check_same_vocab
    from lm_eval_routed.training.citer import CiterOptions, load_checker, run_citer

    rows = load_rows(args.data, args.split, args.limit)
    pick_field(rows, args.prompt_field, args.data)
    pick_field(rows, args.reference_field, args.data)
    load_checker(args.checker)  # a checker that does not load fails before the models
    # what the labels depend on (label-only and full runs share a folder's labels)
    claim_workdir(
        Path(args.workdir),
        "citer",
        {
            "slm": args.slm,
            "llm": args.llm,
            "checker": args.checker,
            "prompt_field": args.prompt_field,
            "reference_field": args.reference_field,
            "rollout_tokens": args.rollout_tokens,
            "stop": list(args.stop),
            "max_rollouts": args.max_rollouts,
            "chat": not args.no_chat,
            "dtype": args.dtype,
        },
    )
    llm, tok = load_pair_model(args.llm, args.dtype, args.device)
    slm, slm_tok = load_pair_model(args.slm, args.dtype, args.device)
    check_same_vocab(slm_tok, tok, args.slm, args.llm)
    opts = CiterOptions(
        prompt_field=args.prompt_field,
        reference_field=args.reference_field,
        chat=not args.no_chat,
        rollout_tokens=args.rollout_tokens,
        stop=tuple(args.stop),
        max_rollouts=args.max_rollouts,
        batch_size=args.batch_size,
        rounds=args.rounds,
        min_recall=getattr(args, "min_recall", 0.95),
        val_frac=getattr(args, "val_frac", 0.2),
    )
    train_opts = _train_opts(args) if not label_only else TrainOptions()
    out = None if label_only else Path(args.out)
    return run_citer(
        Path(args.workdir),
        slm,
        llm,
        tok,
        rows,
        load_checker(args.checker),
        opts,
        train_opts,
        out,
        label_only,
        args.slm,
    )


def rstitch_plus(args) -> dict:
    """R-Stitch+: fit the latency model (unless given), then every RL step, then the checkpoint."""
    from lm_eval_routed.config_args import load_config, parse_arg_string
    from lm_eval_routed.loading import latency_model
    from lm_eval_routed.loading.runtime import build_runtime
    from lm_eval_routed.training.citer import load_checker
    from lm_eval_routed.training.rstitch_train import (
        RStitchPlusOptions,
        load_prompts,
        run_latency,
        train_rstitch_plus,
    )

    opts = RStitchPlusOptions(
        threshold=args.threshold,
        lam=args.lam,
        group=args.group,
        prompts_per_step=args.prompts_per_step,
        steps=args.steps,
        updates=args.updates,
        lr=args.lr,
        width=args.width,
        context_scale=args.context_scale,
        max_new_tokens=args.max_new_tokens,
        stop=tuple(args.stop),
        seed=args.seed,
        init_switch=args.init_switch,
    )
    opts.check()  # every mistake below is refused before a model loads
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} must be at least 1")
    rows = load_rows(args.data, args.split, args.limit)
    if not rows:
        raise ConfigError(f"{args.data} holds no rows; give the prompts to train on")
    pick_field(rows, args.prompt_field, args.data)
    checker = load_checker(args.checker)
    given = {"config": args.config} if args.config else {}
    # rollouts decode as an entropy run at tau (the policy joins it); the schedule only batches
    # rows, so the costs it weighs need no measuring
    given |= {
        **parse_arg_string(args.model_args),
        "router": "entropy",
        "threshold": opts.threshold,
        "batch_size": args.batch_size,
        "cost_slm": "0:0",
        "cost_llm": "0:0",
    }
    cfg = load_config(given)
    latency = latency_model.load(Path(args.latency)) if args.latency else None
    workdir = Path(args.workdir)
    claim_workdir(
        workdir,
        "rstitch-plus",
        {
            "slm": cfg.slm,
            "llm": cfg.llm,
            "dtype": cfg.dtype,
            "checker": args.checker,
            "data": args.data,
            "prompt_field": args.prompt_field,
            "limit": args.limit,
            "chat": not args.no_chat,
            "latency": args.latency,
            **opts.settings(),
        },
    )
    runtime = build_runtime(cfg)
    latency = run_latency(runtime, workdir, latency)
    prompts = load_prompts(rows, args.prompt_field, runtime.tokenizer, not args.no_chat, args.data)
    data = Path(args.data)
    digest = fingerprint([data]) if data.is_file() else args.data
    return train_rstitch_plus(
        runtime, prompts, checker, opts, workdir, Path(args.out), latency, cfg.slm, digest
    )


def main(argv: list[str]) -> int:
    """`lm-eval-routed train SUBCOMMAND ...`; prints the resulting summary as JSON."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = {
        "r2r-label": r2r_label,
        "r2r": r2r,
        "citer-label": lambda a: citer(a, label_only=True),
        "citer": lambda a: citer(a, label_only=False),
        "rstitch-plus": rstitch_plus,
    }[args.what]
    try:
        summary = run(args)
    except ConfigError as err:
        print(f"lm-eval-routed train {args.what}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0
