"""The compiled decode step on a GPU, at the papers' shapes: one prepared script for a lent machine.

Builds a random-weight pair of Qwen2.5-1.5B's and Qwen2.5-14B's shapes (``build_scale_pair.py``
``r2r-14b``, bf16, weights drawn where they run), then:
  1. checks CUDA-graph capture and replay against eager: the SLM's decode steps through the compiled
     engine (mode "reduce-overhead") against the eager engine, greedy tokens and logits;
  2. times routed runs (``random`` r = 0.05, 0.15, 0.3 and lockstep r = 0.15; eager and compiled)
     against the LLM alone through our engine (``llm-only``) and lm-eval's ``hf`` (plain batched
     ``generate`` of the same model), at ``--tokens`` new tokens per row;
  3. lm-eval's ``vllm`` where vllm is installed (it needs the registry, which lent machines lack;
     then the line says so).
Untested until a GPU runs it: no figure from it is in the docs before then.

    python scripts/bench_gpu_compiled.py --json gpu_compiled.json            # 4K tokens per row
    python scripts/bench_gpu_compiled.py --tokens 256 --batch 8 --json quick.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def capture_check(rt, steps: int = 32) -> dict:
    """Greedy SLM decode steps, compiled (CUDA graphs) against eager: same tokens, logits close."""
    from lm_eval_routed.loading.runtime import make_engine

    vocab = rt.decoder.slm.vocab_size
    eager = make_engine(rt.slm, vocab, "native", False)
    comp = make_engine(rt.slm, vocab, "native", False, compile=True)
    prompt = [[11, 12, 13, 14, 15, 16, 17, 18]] * 4
    rows, caches = list(range(4)), [eager.new_cache(4, 64 + steps), comp.new_cache(4, 64 + steps)]
    outs = [e.forward(c, rows, [0] * 4, prompt) for e, c in zip((eager, comp), caches)]
    worst, same = 0.0, True
    for i in range(steps):
        tokens = [outs[0].logits.argmax(-1).tolist(), outs[1].logits.argmax(-1).tolist()]
        same = same and tokens[0] == tokens[1]
        held = [len(prompt[0]) + i] * 4
        outs = [
            e.forward(c, rows, held, [[t] for t in tokens[0]])
            for e, c in zip((eager, comp), caches)
        ]
        diff = (outs[1].logits - outs[0].logits).abs().max() / outs[0].logits.abs().max()
        worst = max(worst, diff.item())
    return {"same_tokens": same, "worst_logit_diff_share": worst, "steps": steps}


def main() -> None:
    """Parse, check for CUDA, build the pair, run the checks and timings, write the JSON."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pair", default="r2r-14b", help="a build_scale_pair.py pair")
    ap.add_argument("--tokens", type=int, default=4096, help="new tokens per row")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "bench_gpu_compiled.py needs a CUDA GPU; none is visible (torch.cuda.is_available())"
        )
    from lm_eval_routed.config_args import load_config
    from lm_eval_routed.loading.runtime import build_runtime, with_costs

    bench, scale = _script("bench_decoder"), _script("build_scale_pair")
    pair_yaml = scale.write_pair(Path(tempfile.mkdtemp()), args.pair, "bfloat16")
    base = load_config({"config": str(pair_yaml), "router": "slm-only", "max_length": 32768})
    first = build_runtime(base)
    report: dict = {"device": torch.cuda.get_device_name(), "pair": args.pair, "args": vars(args)}
    report["capture_vs_eager"] = capture_check(first)
    print("capture vs eager:", report["capture_vs_eager"], flush=True)
    costs, n = first.decoder.costs, 2 * args.batch
    cases = {
        "llm-only": {"router": "llm-only"},
        **{f"random r={p}": {"router": "random", "p": p} for p in (0.05, 0.15, 0.3)},
        "lockstep r=0.15": {"router": "random", "p": 0.15, "schedule": "lockstep"},
    }
    plain_s = bench.run_plain(first.llm, first, args.batch, args.tokens, n)
    report["hf generate tok/s"] = n * args.tokens / plain_s
    for name, extra in cases.items():
        for compiled in (False, True):
            cfg = base.replace(**extra, batch_size=args.batch, compile=compiled)
            rt = build_runtime(with_costs(cfg, costs), first.slm, first.llm, first.tokenizer)
            bench.run_routed(rt, args.batch, min(args.tokens, 64), n)  # warm-up: compiles
            start = time.perf_counter()
            run = bench.run_routed(rt, args.batch, args.tokens, n)
            key = f"{name}{' compiled' if compiled else ''}"
            report[key] = {
                "tok/s": run["tokens"] / run["wall_s"],
                "vs hf generate": plain_s / run["wall_s"],
                "llm_share": run["llm_share"],
                "wall_s": time.perf_counter() - start,
            }
            print(key, report[key], flush=True)
    if importlib.util.find_spec("vllm") is None:
        report["vllm"] = "not installed: lm-eval's vllm model could not run"
    else:
        report["vllm"] = "installed: run lm_eval --model vllm on the same shapes by hand"
    print("vllm:", report["vllm"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
