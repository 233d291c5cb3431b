"""The compiled decode step (``compile=true``, core/compiled.py) against the eager engine, on a CPU.

Prints, for a pair (the scale pair: ``scripts/build_scale_pair.py``):
  * the SLM's decode step, eager and compiled, at batch 1 and 8 over a warm 64-token cache (median
    ms, interleaved round by round so both see the same machine) and their ratio;
  * a routed run (``random``, r = 0.15 by default, batch 8, EOS off), eager and compiled: tokens/s,
    their ratio, each one's speedup over the LLM's batched ``generate`` timed beside it, and whether
    the two runs wrote the same tokens.
Compiling is timed apart: each compiled engine runs one untimed warm-up first (every bucket the
timed runs use). Run it alone on the machine: the figures are ratios of runs made back to back.

    python scripts/build_scale_pair.py scale/
    python scripts/bench_compiled.py --config scale/pair.yaml --json compiled.json
    python scripts/bench_compiled.py --config scale/pair.yaml --compiled slm   # the LLM eager
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lm_eval_routed.config_args import load_config
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.runtime import RoutedRuntime, build_runtime, make_engine, with_costs

# the request set, routed run and plain generate of the decoder benchmark
_spec = importlib.util.spec_from_file_location(
    "bench_decoder", Path(__file__).with_name("bench_decoder.py")
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@torch.inference_mode()
def step_ms(engines: dict, batch: int, rounds: int, context: int = 64) -> dict[str, float]:
    """Median ms of one decode step of each engine over ``batch`` rows holding ``context`` tokens,
    engines interleaved round by round; each one's first steps (compiling) are not timed."""
    caches = {}
    for name, engine in engines.items():
        caches[name] = engine.new_cache(batch, context + 2)
        prompt = [[engine.pad_id] * context] * batch
        engine.forward(caches[name], list(range(batch)), [0] * batch, prompt)
    rows, held, tokens = list(range(batch)), [context] * batch, [[engine.pad_id]] * batch
    for name, engine in engines.items():  # warm-up: the compiled engine compiles here
        start = time.perf_counter()
        engine.forward(caches[name], rows, held, tokens)
        print(f"  {name} batch {batch}: first step {time.perf_counter() - start:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():  # the same slot rewritten: the cache stays as it is
            start = time.perf_counter()
            engine.forward(caches[name], rows, held, tokens)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def routed(rts: dict[str, RoutedRuntime], args, llm) -> dict:
    """Tokens/s of each runtime's routed run and of plain LLM ``generate``, over repeats."""
    n = 2 * args.batch  # rows finish and new ones take their slots
    for name, rt in rts.items():  # warm-up (compiles every bucket the timed runs use)
        start = time.perf_counter()
        bench.run_routed(rt, args.batch, args.tokens, n)
        print(f"  routed warm-up, {name}: {time.perf_counter() - start:.1f} s", flush=True)
    out: dict[str, list[float]] = {f"{name} tok/s": [] for name in rts}
    out.update({f"{name} vs LLM gen": [] for name in rts})
    same = True
    for rep in range(args.repeats):
        plain_s = bench.run_plain(llm, next(iter(rts.values())), args.batch, args.tokens, n)
        tokens = {}
        for name, rt in rts.items():
            run = bench.run_routed(rt, args.batch, args.tokens, n, draw=rep)
            out[f"{name} tok/s"].append(run["tokens"] / run["wall_s"])
            out[f"{name} vs LLM gen"].append(plain_s / run["wall_s"])
            tokens[name] = [(str(f.model), f.fed) for f in run["trace"]]
        same = same and len({json.dumps(t) for t in tokens.values()}) == 1
        print(f"  repeat {rep + 1}/{args.repeats} done", flush=True)
    figures = {k: statistics.median(v) for k, v in out.items()}
    figures["compiled / eager throughput"] = figures["compiled tok/s"] / figures["eager tok/s"]
    figures["same forwards"] = same
    return figures


def main() -> None:
    """Parse the arguments, build the engines and runtimes, print and save the figures."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, help="a pair's YAML (scripts/build_scale_pair.py)")
    ap.add_argument("--batch", type=int, default=8, help="the routed run's batch size")
    ap.add_argument("--p", type=float, default=0.15, help="the routed run's LLM rate (random)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=50, help="timed decode steps per engine")
    ap.add_argument(
        "--compiled", choices=("both", "slm"), default="both", help="which engines compile"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    try:  # a bad --config as one line, before any model loads
        base = load_config({"config": args.config, "router": "slm-only"})
    except ConfigError as err:
        ap.error(str(err))
    first = build_runtime(base)
    if first.device.type != "cpu":
        ap.error(
            f"this benchmark is for the CPU; {first.device} is scripts/bench_gpu_compiled.py's"
        )
    slm, llm, tok = first.slm, first.llm, first.tokenizer
    vocab = first.decoder.slm.vocab_size
    report: dict = {"config": args.config, "threads": torch.get_num_threads(), "args": vars(args)}
    print("SLM decode step (ms):", flush=True)
    for batch in (1, 8):
        engines = {
            "eager": make_engine(slm, vocab, "native", base.prepack),
            "compiled": make_engine(slm, vocab, "native", base.prepack, compile=True),
        }
        ms = step_ms(engines, batch, args.rounds)
        ms["eager / compiled"] = ms["eager"] / ms["compiled"]
        report[f"slm step, batch {batch}"] = ms
        print(f"  batch {batch}: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()), flush=True)
    costs = first.decoder.costs  # one cost model, so both runs schedule the LLM alike
    rts = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        extra = {"router": "random", "p": args.p, "batch_size": args.batch, "compile": compiled}
        cfg = with_costs(base.replace(**extra), costs)
        rts[name] = build_runtime(cfg, slm=slm, llm=llm, tokenizer=tok)
    if args.compiled == "slm":
        rts["compiled"].decoder.llm.compiled = None
    print(f"routed, batch {args.batch}, random r={args.p:g}:", flush=True)
    figures = routed(rts, args, llm)
    report[f"routed batch {args.batch} r={args.p:g}"] = figures
    for key, value in figures.items():
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    steps = rts["compiled"].info()["routed"]["compiled_steps"]
    report["compiled_steps"] = steps
    print(f"  steps run compiled: {steps}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
