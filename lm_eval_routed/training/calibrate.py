"""`lm-eval-routed calibrate entropy`: R-Stitch thresholds for target LLM shares, and a latency model.

Entropy is R-Stitch's normalized entropy H / log V of the SLM's next-token distribution (full
vocabulary, temperature 1), taken over a calibration set either teacher-forced (prompt + given text) or
over the SLM's own greedy continuations. For a target share s the threshold is the (1 - s) quantile, so
a share s of calibration tokens lies above it. In stitch mode the LLM then keeps control until it is
confident again, so the share of tokens it finally writes is at least s; the per-token router
(``entropy-token``) sends exactly the tokens above the threshold, in nats (also written).

The latency model is R-Stitch+'s (``loading/latency_model.py``), fitted per model from timed forwards;
``cost_slm``/``cost_llm`` (``fixed:per_token``, what the accounting's modeled latency uses) are its
prefill at kv = 0 without the quadratic term. ``calibrate latency`` fits it alone, for a config's pair.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic
from lm_eval_routed.loading import latency_model
from lm_eval_routed.routers.entropy import entropy_nats
from lm_eval_routed.training.common import (
    batched,
    encode_prompt,
    forward_features,
    greedy,
    load_rows,
    pick_field,
)

log = logging.getLogger(__name__)


def token_entropies(slm, tok, prompts: list[list[int]], texts: list[list[int]]) -> torch.Tensor:
    """Normalized entropy at every position that predicts a token of ``texts[i]`` after ``prompts[i]``."""
    out = []
    for p, t in tqdm(list(zip(prompts, texts)), desc="entropies"):
        if not t:
            continue
        _, logits = forward_features(slm, [p + t])
        span = logits[0, len(p) - 1 : len(p) - 1 + len(t)]
        out.append(entropy_nats(span) / math.log(span.shape[-1]))
    if not out:
        raise ConfigError("the calibration set produced no tokens; give texts or more prompts")
    return torch.cat(out).cpu()


def thresholds_for(entropies: torch.Tensor, shares: list[float]) -> dict[float, float]:
    """The threshold per target share: the (1 - share) quantile of the entropies."""
    for s in shares:
        if not 0.0 < s < 1.0:
            raise ConfigError(f"target share {s} is out of range; give shares between 0 and 1")
    values = entropies.double()
    return {s: float(torch.quantile(values, 1.0 - s)) for s in shares}


# -- latency -------------------------------------------------------------------------------------


def fit_latency(
    model,
    n_inf: tuple[int, ...] = latency_model.DEFAULT_N_INF,
    n_kv: tuple[int, ...] = latency_model.DEFAULT_N_KV,
    repeats: int = 3,
) -> dict:
    """R-Stitch+'s latency model of ``model`` (``loading/latency_model.py``), timed on the engine a
    run would build over it, with the timings it was fitted on."""
    from lm_eval_routed.loading.runtime import make_engine

    engine = make_engine(model, model.get_output_embeddings().weight.shape[0])
    timings = latency_model.time_grid(engine, n_inf, n_kv, repeats)
    return {
        **asdict(latency_model.fit_model(timings)),
        "measured": [asdict(t) for t in timings],
    }


def cost_pair(fit: dict) -> str:
    """``fixed:per_token`` for RoutedConfig's cost_slm / cost_llm (``latency_model.cost_pair``)."""
    fitted = {k: v for k, v in fit.items() if k != "measured"}
    fixed, per_token = latency_model.cost_pair(latency_model.ModelLatency(**fitted))
    return f"{fixed:.6g}:{per_token:.6g}"


# -- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lm-eval-routed calibrate entropy", description=__doc__.split("\n")[0]
    )
    p.add_argument("--slm", required=True, help="SLM: hub id, folder, .gguf or demo:slm")
    p.add_argument("--llm", help="LLM to time for the latency model (optional)")
    p.add_argument("--data", required=True, help="JSONL file or datasets id of calibration rows")
    p.add_argument("--split", default="train")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument(
        "--text-field", help="teacher-force this field after the prompt (else SLM-generated)"
    )
    p.add_argument("--limit", type=int)
    p.add_argument("--max-new-tokens", type=int, default=256, help="SLM generation budget")
    p.add_argument("--shares", default="0.1,0.2,0.3", help="target LLM shares, comma-separated")
    p.add_argument("--no-chat", action="store_true", help="use prompts as raw text")
    p.add_argument("--no-latency", action="store_true", help="skip timing the models")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument(
        "--out", required=True, help="YAML to write (a config= file); details beside it as JSON"
    )
    return p


def entropy_main(argv: list[str]) -> int:
    """Calibrate entropy thresholds (and the latency model); write a config YAML plus details JSON."""
    from lm_eval_routed.loading.models import load_pair_model

    args = _parser().parse_args(argv)
    shares = [float(s) for s in args.shares.split(",") if s.strip()]
    rows = load_rows(args.data, args.split, args.limit)
    slm, tok = load_pair_model(args.slm, args.dtype, args.device)
    prompts = [
        encode_prompt(tok, t, not args.no_chat)
        for t in pick_field(rows, args.prompt_field, args.data)
    ]
    if args.text_field:
        texts = [
            tok(t, add_special_tokens=False)["input_ids"]
            for t in pick_field(rows, args.text_field, args.data)
        ]
        source = f"teacher-forced field {args.text_field!r}"
    else:
        texts = [
            ids
            for chunk in batched(prompts, 8)
            for ids, _ in greedy(slm, tok, chunk, args.max_new_tokens)
        ]
        source = "SLM greedy continuations"
    ent = token_entropies(slm, tok, prompts, texts)
    taus = thresholds_for(ent, shares)
    vocab = slm.get_output_embeddings().weight.shape[0]
    details = {
        "entropy": {
            "units": "normalized (H / log V)",
            "vocab_size": vocab,
            "source": source,
            "tokens": len(ent),
            "thresholds": {str(s): t for s, t in taus.items()},
            "thresholds_nats": {str(s): t * math.log(vocab) for s, t in taus.items()},
            "share_above": {str(s): float((ent > t).float().mean()) for s, t in taus.items()},
        }
    }
    config = {"slm": args.slm, "router": "entropy", "threshold": round(taus[shares[0]], 6)}
    if args.llm:
        config["llm"] = args.llm
    if not args.no_latency:
        details["latency"] = {"slm": fit_latency(slm)}
        config["cost_slm"] = cost_pair(details["latency"]["slm"])
        if args.llm:
            llm, _ = load_pair_model(args.llm, args.dtype, args.device)
            details["latency"]["llm"] = fit_latency(llm)
            config["cost_llm"] = cost_pair(details["latency"]["llm"])
    _write(Path(args.out), config, details, shares, taus)
    print(f"wrote {args.out} (threshold {config['threshold']} for share {shares[0]:g})")
    return 0


def _write(out: Path, config: dict, details: dict, shares: list[float], taus: dict) -> None:
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    others = ", ".join(f"share {s:g}: {taus[s]:.6g}" for s in shares)
    header = (
        "# written by `lm-eval-routed calibrate entropy`; threshold in normalized entropy (H / log V)\n"
        f"# thresholds per target share: {others}\n"
        f"# details (nats, latency fits): {out.with_suffix('.json').name}\n"
    )
    write_atomic(out.with_suffix(".json"), json.dumps(details, indent=2) + "\n")
    write_atomic(out, header + yaml.safe_dump(config, sort_keys=False))


def main(argv: list[str]) -> int:
    """`lm-eval-routed calibrate entropy|latency ...`."""
    targets = {"entropy": entropy_main, "latency": latency_main}
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: lm-eval-routed calibrate entropy --slm REF --data FILE --out FILE.yaml [...]\n"
            "       lm-eval-routed calibrate latency --config CFG --out FILE.json [...]"
        )
        return 0
    if argv[0] not in targets:
        print(
            f"lm-eval-routed calibrate: unknown target {argv[0]!r}; choose: {', '.join(targets)}",
            file=sys.stderr,
        )
        return 2
    try:
        return targets[argv[0]](argv[1:])
    except ConfigError as err:
        print(f"lm-eval-routed calibrate {argv[0]}: {err}", file=sys.stderr)
        return 2


def latency_main(argv: list[str]) -> int:
    """`calibrate latency`: imported when asked for (it loads the runtime's model loaders)."""
    from lm_eval_routed.training.calibrate_latency import latency_main as run

    return run(argv)
