"""Benchmark the mixed decoder against the work it cannot avoid and against the plain paths.

Prints ratios, not absolute times (shared machines make absolute times noise):
  * measured / ideal  -- wall time over the sum of the run's forwards, each timed on the plain model at
                         the same batch and token count (orchestration overhead: Python per step, cache
                         copies, padding waste, re-prefill);
  * routed / LLM-only -- throughput against plain ``generate`` of the LLM at the same batch size;
  * LLM forwards per 100 generated tokens, for the pause-and-batch schedule and for lockstep;
  * speculative vs transformers' assisted generation; routed llm-only vs lm-eval's ``hf`` (docs/s).

    python scripts/bench_decoder.py                 # demo pair, CPU fp32
    python scripts/bench_decoder.py --json out.json --repeats 3 --tokens 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import DynamicCache

from lm_eval_routed.config import load_config
from lm_eval_routed.decoder import GenRequest
from lm_eval_routed.runtime import RoutedRuntime, build_runtime

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue in simple words.",
    "List three tips for staying focused while studying.",
    "Describe the water cycle step by step.",
    "What makes a good friend? Answer in a few sentences.",
    "Give a recipe for a simple tomato soup.",
    "Summarize the plot of a heist movie you invent.",
    "How do bees make honey?",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainCosts:
    """Time the plain models at given (batch, tokens) shapes over a warm cache, memoized."""

    def __init__(self, rt: RoutedRuntime, kv_len: int, repeats: int = 3) -> None:
        self.models = {"slm": rt.slm, "llm": rt.llm}
        self.kv_len, self.repeats, self.device = kv_len, repeats, rt.device
        self.memo: dict[tuple[str, int, int], float] = {}

    @torch.inference_mode()
    def forward_s(self, model: str, batch: int, tokens: int) -> float:
        key = (model, batch, tokens)
        if key not in self.memo:
            net = self.models[model]
            times = []
            for _ in range(self.repeats):
                cache = DynamicCache(config=net.config)
                net(
                    input_ids=torch.zeros(batch, self.kv_len, dtype=torch.long, device=self.device),
                    past_key_values=cache,
                    use_cache=True,
                )
                ids = torch.zeros(batch, tokens, dtype=torch.long, device=self.device)
                sync(self.device)
                start = time.perf_counter()
                net(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                sync(self.device)
                times.append(time.perf_counter() - start)
            self.memo[key] = statistics.median(times)
        return self.memo[key]

    def ideal_s(self, trace: list[tuple[str, list[int]]]) -> float:
        """The run's forwards without padding: rows x ceil(mean new tokens) on the plain model."""
        total = 0.0
        for model, fed in trace:
            per_row = -(-sum(fed) // len(fed))
            total += self.forward_s(model, len(fed), per_row)
        return total


def requests(rt: RoutedRuntime, batch: int, tokens: int) -> list[GenRequest]:
    tok = rt.tokenizer
    out = []
    for i in range(batch):
        chat = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        out.append(GenRequest(rt.encode(text, tokens), tokens, seed=i))
    return out


def run_routed(rt: RoutedRuntime, batch: int, tokens: int) -> dict:
    """One routed run with the EOS disabled so every row makes exactly ``tokens`` tokens."""
    rt.decoder.eos_ids, rt.decoder.trace = set(), []
    reqs = requests(rt, batch, tokens)
    sync(rt.device)
    start = time.perf_counter()
    results = rt.decoder.generate(reqs, batch)
    sync(rt.device)
    wall = time.perf_counter() - start
    n_tokens = sum(r.record.tokens for r in results)
    llm_forwards = sum(1 for model, _ in rt.decoder.trace if model == "llm")
    return {
        "wall_s": wall,
        "tokens": n_tokens,
        "trace": rt.decoder.trace,
        "llm_share": sum(r.record.tokens_llm for r in results) / n_tokens,
        "llm_forwards_per_100": 100 * llm_forwards / n_tokens,
    }


@torch.inference_mode()
def run_plain(model, rt: RoutedRuntime, batch: int, tokens: int, assistant=None) -> float:
    """Wall time of plain greedy ``generate`` (left-padded batch), optionally assisted."""
    reqs = requests(rt, batch, tokens)
    width = max(len(r.prompt_ids) for r in reqs)
    pad = rt.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in reqs])
    mask = (
        torch.arange(width)[None, :]
        >= torch.tensor([width - len(r.prompt_ids) for r in reqs])[:, None]
    )
    kwargs = {"assistant_model": assistant} if assistant is not None else {}
    sync(rt.device)
    start = time.perf_counter()
    model.generate(
        input_ids=ids.to(rt.device),
        attention_mask=mask.long().to(rt.device),
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        pad_token_id=pad,
        **kwargs,
    )
    sync(rt.device)
    return time.perf_counter() - start


def bench_decoding(rt_for, args) -> dict:
    """Alternate plain and routed runs; medians over repeats."""
    cases = [
        (f"random r={r}", {"router": "random", "p": str(r)}, r) for r in (0.0, 0.05, 0.15, 0.3, 1.0)
    ]
    cases += [
        (f"entropy t={t}", {"router": "entropy", "threshold": str(t)}, None) for t in (0.1, 0.3)
    ]
    cases.append(("speculative", {"router": "speculative"}, None))
    base = rt_for({"router": "slm-only"})
    plain = PlainCosts(
        base, kv_len=len(requests(base, 1, args.tokens)[0].prompt_ids) + args.tokens // 2
    )
    rows = []
    for batch in args.batches:
        plain_llm = [run_plain(base.llm, base, batch, args.tokens) for _ in range(args.repeats)]
        plain_slm = [run_plain(base.slm, base, batch, args.tokens) for _ in range(args.repeats)]
        llm_s = statistics.median(plain_llm)
        batch_cases = list(cases)
        if batch > 1:
            batch_cases += [
                (f"lockstep r={r}", {"router": "random", "p": str(r), "schedule": "lockstep"}, r)
                for r in (0.05, 0.15, 0.3)
            ]
        for name, extra, _ in batch_cases:
            if batch > 1 and name.startswith("speculative"):
                continue
            rt = rt_for(extra)
            runs = [run_routed(rt, batch, args.tokens) for _ in range(args.repeats)]
            wall = statistics.median(r["wall_s"] for r in runs)
            ideal = plain.ideal_s(runs[0]["trace"])
            row = {
                "case": name,
                "batch": batch,
                "llm_share": runs[0]["llm_share"],
                "ratio_vs_ideal": wall / ideal,
                "speedup_vs_llm_generate": llm_s / wall,
                "llm_forwards_per_100_tokens": runs[0]["llm_forwards_per_100"],
            }
            if name == "speculative":
                assisted = statistics.median(
                    run_plain(base.llm, base, 1, args.tokens, assistant=base.slm)
                    for _ in range(args.repeats)
                )
                row["ratio_vs_assisted_generation"] = wall / assisted
            rows.append(row)
            print(format_row(row), flush=True)
        rows.append(
            {
                "case": "plain slm generate",
                "batch": batch,
                "speedup_vs_llm_generate": llm_s / statistics.median(plain_slm),
            }
        )
        print(format_row(rows[-1]), flush=True)
    return {"rows": rows}


def format_row(row: dict) -> str:
    parts = [f"{row['case']:<20} b={row['batch']}"]
    for key, label in (
        ("llm_share", "share"),
        ("ratio_vs_ideal", "meas/ideal"),
        ("speedup_vs_llm_generate", "vs LLM gen"),
        ("llm_forwards_per_100_tokens", "LLM fwd/100tok"),
        ("ratio_vs_assisted_generation", "vs assisted"),
    ):
        if key in row:
            parts.append(f"{label} {row[key]:.2f}")
    return "  ".join(parts)


def bench_lm_eval(args) -> dict:
    """Docs/s of `routed` llm-only against lm-eval's `hf` on the same LLM and a generate_until task."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from lm_eval_routed.lm_eval_model import RoutedLM

    routed = RoutedLM(batch_size=args.lm_eval_batch, config=args.config, router="llm-only")
    hf = HFLM(
        pretrained=routed.runtime.llm, tokenizer=routed.tokenizer, batch_size=args.lm_eval_batch
    )
    times = defaultdict(list)
    for _ in range(args.repeats):
        for name, lm in (("hf", hf), ("routed", routed)):
            start = time.perf_counter()
            lm_eval.simple_evaluate(
                model=lm, tasks=[args.task], limit=args.limit, verbosity="WARNING"
            )
            times[name].append(time.perf_counter() - start)
    hf_s, routed_s = statistics.median(times["hf"]), statistics.median(times["routed"])
    out = {
        "task": args.task,
        "docs": args.limit,
        "hf_docs_per_s": args.limit / hf_s,
        "routed_docs_per_s": args.limit / routed_s,
        "routed_over_hf_throughput": hf_s / routed_s,
    }
    print(
        f"lm-eval {args.task} x{args.limit}: routed llm-only / hf throughput "
        f"{out['routed_over_hf_throughput']:.2f}",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--config", default="demo", help="preset or YAML holding slm/llm (default: demo)"
    )
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per row")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument(
        "--task", default="routed_demo", help="generate_until task for the lm-eval comparison"
    )
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--lm-eval-batch", type=int, default=8)
    ap.add_argument("--skip-lm-eval", action="store_true")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()

    def config(extra: dict):
        # cost constants are irrelevant here: skip their start-up measurement
        return load_config(
            {
                "config": args.config,
                "dtype": args.dtype,
                "cost_slm": "0:0",
                "cost_llm": "0:0",
                **extra,
            }
        )

    first = build_runtime(config({"router": "slm-only"}))

    def rt_for(extra: dict) -> RoutedRuntime:
        return build_runtime(config(extra), slm=first.slm, llm=first.llm, tokenizer=first.tokenizer)

    report = {
        "device": str(first.device),
        "dtype": str(first.dtype),
        "tokens": args.tokens,
        "decoding": bench_decoding(rt_for, args),
    }
    if not args.skip_lm_eval:
        report["lm_eval"] = bench_lm_eval(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
