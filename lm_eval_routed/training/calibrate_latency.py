"""`lm-eval-routed calibrate latency`: fit R-Stitch+'s latency model for a config's pair, write its JSON.

Each model of the pair is loaded as a run loads it (its ``slm``/``llm``, ``dtype``, ``device``,
``engine``, ``prepack``), timed on the engine a run builds over it at every (n_inf, n_kv) of the grid,
and fitted (``loading/latency_model.py``). The JSON records the fit, the timings and where they were taken.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from lm_eval_routed.config_args import load_config, parse_arg_string
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import latency_model
from lm_eval_routed.loading.latency_model import LatencyModel, ModelLatency, Timing


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what}={text!r} must be whole numbers separated by commas") from None
    if not values or min(values) < 0:
        raise ConfigError(f"{what}={text!r} must list whole numbers >= 0")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lm-eval-routed calibrate latency", description=__doc__.split("\n")[0]
    )
    p.add_argument("--config", help="a config file or preset naming the pair (as config= takes)")
    p.add_argument("--model-args", default="", help="k=v,... over the config (slm=, llm=, device=)")
    p.add_argument(
        "--n-inf",
        default=",".join(map(str, latency_model.DEFAULT_N_INF)),
        help="new-token counts to time (1: decode steps; 3 or more above 1 for the prefill fit)",
    )
    p.add_argument(
        "--n-kv",
        default=",".join(map(str, latency_model.DEFAULT_N_KV)),
        help="cache lengths to time (2 or more)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timings per point (the best is kept)")
    p.add_argument("--out", required=True, help="JSON file to write")
    return p


def latency_main(argv: list[str]) -> int:
    """Fit both models' latency and write the JSON."""
    from lm_eval_routed.loading.models import load_model, resolve_device, resolve_dtype
    from lm_eval_routed.loading.runtime import make_engine

    args = _parser().parse_args(argv)
    n_inf, n_kv = _ints(args.n_inf, "--n-inf"), _ints(args.n_kv, "--n-kv")
    if args.repeats < 1:
        raise ConfigError(f"--repeats={args.repeats} must be at least 1")
    given = parse_arg_string(args.model_args)
    cfg = load_config({"config": args.config, **given} if args.config else given)
    # a grid the fit cannot use fails now, not after the models load
    latency_model.fit_model(Timing(n, kv, 0.0) for n in n_inf for kv in n_kv)
    device = resolve_device(cfg.device)
    fits: dict[str, ModelLatency] = {}
    timings: dict[str, list[dict]] = {}
    with tqdm(total=2 * len(n_inf) * len(n_kv), desc="timing forwards") as bar:
        for role, ref, dtype_name in (
            ("slm", cfg.slm, cfg.slm_dtype or cfg.dtype),
            ("llm", cfg.llm, cfg.dtype),
        ):
            bar.set_postfix_str(role)
            model, _ = load_model(
                ref, resolve_dtype(dtype_name, device), device, cfg.trust_remote_code
            )
            vocab = model.get_output_embeddings().weight.shape[0]
            engine = make_engine(model, vocab, cfg.engine, cfg.prepack)
            measured = latency_model.time_grid(engine, n_inf, n_kv, args.repeats, bar.update)
            fits[role] = latency_model.fit_model(measured)
            timings[role] = [asdict(t) for t in measured]
            del engine, model
    where = {
        "slm": cfg.slm,
        "llm": cfg.llm,
        "device": str(device),
        "dtype": cfg.dtype,
        "slm_dtype": cfg.slm_dtype or cfg.dtype,
        "engine": cfg.engine,
        "repeats": args.repeats,
        "timings": timings,
    }
    latency_model.save(Path(args.out), LatencyModel(fits["slm"], fits["llm"], where))
    for role, fit in fits.items():
        print(
            f"{role}: prefill R^2 {fit.r2_prefill:.4f}, decode R^2 {fit.r2_decode:.4f}, "
            f"one decode step at 256 cached tokens {fit.decode(256) * 1e3:.3g} ms"
        )
    print(f"wrote {args.out}")
    return 0
