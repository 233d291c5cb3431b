"""`lm-eval-routed calibrate entropy`: R-Stitch thresholds for target LLM shares, and a latency model.

Entropy is R-Stitch's normalized entropy H / log V of the SLM's next-token distribution (full
vocabulary, temperature 1), taken over a calibration set either teacher-forced (prompt + given text) or
over the SLM's own greedy continuations. For a target share s the threshold is the (1 - s) quantile, so
a share s of calibration tokens lies above it. In stitch mode the LLM then keeps control until it is
confident again, so the share of tokens it finally writes is at least s; the per-token router
(``entropy-token``) sends exactly the tokens above the threshold, in nats (also written).

The latency model times plain forwards of each model over n new tokens on a cache of length kv and fits,
by least squares, prefill(n, kv) = a + b n + c n kv and decode(kv) = d + e kv; ``cost_slm``/``cost_llm``
(``fixed:per_token``, what the accounting's modeled latency uses) come from the prefill fit at kv = 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lm_eval_routed.core.engine import cache_kwarg
from lm_eval_routed.errors import ConfigError
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


def _timed_forward(model, n: int, kv: int, repeats: int) -> float:
    """Best-of-``repeats`` seconds of one forward over ``n`` new tokens after a ``kv``-token cache."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    kwarg = cache_kwarg(model)
    best = float("inf")
    for _ in range(repeats):
        cache = DynamicCache()
        with torch.inference_mode():
            if kv:
                model(
                    input_ids=torch.zeros(1, kv, dtype=torch.long, device=device),
                    **{kwarg: cache},
                )
            ids = torch.zeros(1, n, dtype=torch.long, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1, **{kwarg: cache})
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best


def _lstsq(rows: list[list[float]], times: list[float]) -> tuple[list[float], float]:
    a = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(times, dtype=torch.float64)
    coef = torch.linalg.lstsq(a, y.unsqueeze(-1)).solution.flatten()
    resid = y - a @ coef
    r2 = 1.0 - float(resid.pow(2).sum() / (y - y.mean()).pow(2).sum().clamp_min(1e-30))
    return [float(c) for c in coef], r2


def fit_latency(
    model,
    ns: tuple[int, ...] = (1, 4, 16, 64),
    kvs: tuple[int, ...] = (0, 64, 256),
    repeats: int = 3,
) -> dict:
    """Fitted prefill(n, kv) = a + b n + c n kv and decode(kv) = d + e kv, seconds, with R^2 each."""
    _timed_forward(model, 1, 0, 1)  # warm-up
    grid = [(n, kv, _timed_forward(model, n, kv, repeats)) for n in ns for kv in kvs]
    (a, b, c), r2_p = _lstsq([[1.0, n, n * kv] for n, kv, _ in grid], [t for *_, t in grid])
    dec = [(kv, t) for n, kv, t in grid if n == 1]
    (d, e), r2_d = _lstsq([[1.0, kv] for kv, _ in dec], [t for _, t in dec])
    return {
        "prefill": {"fixed_s": a, "per_token_s": b, "per_token_kv_s": c, "r2": r2_p},
        "decode": {"fixed_s": d, "per_kv_s": e, "r2": r2_d},
        "measured": [{"n": n, "kv": kv, "s": t} for n, kv, t in grid],
    }


def cost_pair(fit: dict) -> str:
    """``fixed:per_token`` for RoutedConfig's cost_slm / cost_llm (kv = 0, never negative)."""
    pre = fit["prefill"]
    return f"{max(pre['fixed_s'], 0.0):.6g}:{max(pre['per_token_s'], 0.0):.6g}"


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
    out.write_text(header + yaml.safe_dump(config, sort_keys=False))
    out.with_suffix(".json").write_text(json.dumps(details, indent=2) + "\n")


def main(argv: list[str]) -> int:
    """`lm-eval-routed calibrate entropy ...`."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lm-eval-routed calibrate entropy --slm REF --data FILE --out FILE.yaml [...]")
        return 0
    if argv[0] != "entropy":
        print(
            f"lm-eval-routed calibrate: unknown target {argv[0]!r}; choose: entropy",
            file=sys.stderr,
        )
        return 2
    try:
        return entropy_main(argv[1:])
    except ConfigError as err:
        print(f"lm-eval-routed calibrate: {err}", file=sys.stderr)
        return 2
