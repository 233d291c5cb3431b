"""Benchmark the mixed decoder against the work it cannot avoid and against the plain paths.

Prints ratios, not absolute times (shared machines make absolute times noise):
  * measured / ideal  -- wall time over the sum of the run's forwards, each timed on the plain model at
                         the same batch and token count (orchestration overhead: Python per step, cache
                         copies, padding waste, re-prefill);
  * routed / LLM-only -- throughput against plain ``generate`` of the LLM at the same batch size;
  * LLM forwards per 100 generated tokens, for the pause-and-batch schedule and for lockstep, and
    how many times fewer the first made than the second at the same LLM share (lockstep fwd/these);
  * peak memory of a routed run over what the two plain models' runs would need together;
  * guesses right -- with ``guess_ahead``, the share of checked guesses the LLM agreed with;
  * taken ahead -- batch > 1: the share of LLM tokens rows took from a forward they rode along in;
  * speculative vs transformers' assisted generation; routed llm-only vs lm-eval's ``hf`` (docs/s).

    python scripts/bench_decoder.py                 # demo pair, CPU fp32
    python scripts/bench_decoder.py --json out.json --repeats 3 --tokens 64
    python scripts/bench_decoder.py --dtype bfloat16 --skip-lm-eval   # GPU: one warm-up repeat first
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import DynamicCache, GenerationConfig

from lm_eval_routed.config import ENGINES
from lm_eval_routed.config_args import load_config
from lm_eval_routed.core import cpu_linear
from lm_eval_routed.core.cache import round_up
from lm_eval_routed.core.engine import cache_kwarg, shared_weights_copy
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.runtime import RoutedRuntime, build_runtime, with_costs

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


class PeakMemory:
    """Peak memory over a call: CUDA's allocator peak, or the process's peak resident set on Linux
    (reset through /proc/self/clear_refs); None where neither can be read."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def now(self) -> int | None:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return self._status("VmRSS")

    def during(self, fn: Callable, *args) -> tuple:
        """``fn(*args)`` and the peak bytes while it ran."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return fn(*args), torch.cuda.max_memory_allocated(self.device)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak restarts from now
        except OSError:
            return fn(*args), None
        return fn(*args), self._status("VmHWM")

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None


class Baselines:
    """The plain models a routed run is set against, on the kernels its engines use: with prepacked
    engines, prepacked copies of the runtime's models over the same weights (the models themselves
    stay as loaded). Their packed copies are let go before each routed run (``release``), so its
    peak memory holds what the run itself holds."""

    def __init__(self, rt: RoutedRuntime) -> None:
        self.slm, self.llm = rt.slm, rt.llm
        if rt.prepacked:
            self.slm, self.llm = (shared_weights_copy(m) for m in (rt.slm, rt.llm))
            for model in (self.slm, self.llm):
                cpu_linear.prepack_linears(model)

    def release(self) -> None:
        for module in (*self.slm.modules(), *self.llm.modules()):
            cpu_linear.release(module)


class PlainCosts:
    """Plain forwards of each model at (batch, new tokens) over a warm cache, memoized per repeat.

    One cache per (model, batch) is prefilled once to ``kv_len`` and cropped back after every timed
    forward, so timing a shape costs one forward, not a prefill. ``reset()`` between repeats re-times
    every shape next to the runs it prices: absolute speed drifts on shared machines, ratios taken
    side by side do not.
    """

    def __init__(self, rt: RoutedRuntime, models: Baselines, kv_len: int) -> None:
        self.models = {"slm": models.slm, "llm": models.llm}
        self.kv_len, self.device = kv_len, rt.device
        self.memo: dict[tuple[str, int, int], float] = {}
        self.warm: dict[tuple[str, int], DynamicCache] = {}

    def reset(self) -> None:
        self.memo.clear()

    @torch.inference_mode()
    def forward_s(self, model: str, batch: int, tokens: int) -> float:
        key = (model, batch, tokens)
        if key not in self.memo:
            net = self.models[model]
            cache = self.warm.get((model, batch))
            if cache is None:
                cache = self.warm[(model, batch)] = DynamicCache(config=net.config)
                ids = torch.zeros(batch, self.kv_len, dtype=torch.long, device=self.device)
                net(input_ids=ids, use_cache=True, **{cache_kwarg(net): cache})
            ids = torch.zeros(batch, tokens, dtype=torch.long, device=self.device)
            kwargs = {cache_kwarg(net): cache, "use_cache": True, "logits_to_keep": 1}  # untimed
            times = []
            for _ in range(2):
                sync(self.device)
                start = time.perf_counter()
                net(input_ids=ids, **kwargs)
                sync(self.device)
                times.append(time.perf_counter() - start)
                cache.crop(-tokens)
            self.memo[key] = min(times)
        return self.memo[key]

    def ideal_s(self, trace: list[tuple[str, list[int]]]) -> float:
        """The run's forwards without padding: rows x ceil(mean new tokens) on the plain model.

        Each forward is priced at the cheaper of that shape and the same with rows rounded up to a
        multiple of 4, so the GEMM-friendly padding the engine does cannot flatter the ratio.
        """
        total = 0.0
        for model, fed in trace:
            rows, per_row = len(fed), -(-sum(fed) // len(fed))
            total += min(
                self.forward_s(model, rows, per_row),
                self.forward_s(model, round_up(rows, 4), per_row),
            )
        return total


def requests(rt: RoutedRuntime, n: int, tokens: int, draw: int = 0) -> list[GenRequest]:
    """``n`` chat prompts (cycling through PROMPTS), each with its own seed; another ``draw`` gives
    them other seeds, so a random router routes other positions."""
    tok = rt.tokenizer
    out = []
    for i in range(n):
        chat = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        out.append(GenRequest(rt.encode(text, tokens), tokens, seed=draw * n + i))
    return out


def run_routed(rt: RoutedRuntime, batch: int, tokens: int, n: int, draw: int = 0) -> dict:
    """One routed run of ``n`` requests, EOS disabled so every row makes exactly ``tokens`` tokens."""
    rt.decoder.eos_ids, rt.decoder.trace = set(), []
    reqs = requests(rt, n, tokens, draw)
    sync(rt.device)
    start = time.perf_counter()
    results = rt.decoder.generate(reqs, batch)
    sync(rt.device)
    wall = time.perf_counter() - start
    n_tokens = sum(r.record.tokens for r in results)
    llm_forwards = sum(1 for model, _ in rt.decoder.trace if model == "llm")
    counters = rt.decoder.counters
    right, checked = counters.guesses_right, counters.guesses_checked
    llm_tokens = sum(r.record.tokens_llm for r in results)
    return {
        "taken_ahead": counters.taken_at_hand / llm_tokens if llm_tokens else None,
        "guesses_right": right / checked if checked else None,
        "wall_s": wall,
        "tokens": n_tokens,
        "trace": rt.decoder.trace,
        "llm_share": llm_tokens / n_tokens,
        "llm_forwards_per_100": 100 * llm_forwards / n_tokens,
    }


@torch.inference_mode()
def run_plain(model, rt: RoutedRuntime, batch: int, tokens: int, n: int, assistant=None) -> float:
    """Wall time of plain greedy ``generate`` over ``n`` requests, ``batch`` at a time (left-padded)."""
    reqs = requests(rt, n, tokens)
    pad = rt.tokenizer.pad_token_id
    config = GenerationConfig(
        max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=pad
    )
    kwargs = {"assistant_model": assistant} if assistant is not None else {}
    # Prepacked layers pack their weights on first use (and let go of them before each routed run):
    # one untimed forward per model, so no timed run pays for packing.
    for net in (model, assistant):
        if net is not None:
            net(input_ids=torch.tensor([reqs[0].prompt_ids[:4]], device=rt.device))
    total = 0.0
    for chunk in (reqs[i : i + batch] for i in range(0, n, batch)):
        width = max(len(r.prompt_ids) for r in chunk)
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in chunk])
        mask = ids.new_tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in chunk]
        )
        sync(rt.device)
        start = time.perf_counter()
        model.generate(
            input_ids=ids.to(rt.device),
            attention_mask=mask.to(rt.device),
            generation_config=config,
            **kwargs,
        )
        sync(rt.device)
        total += time.perf_counter() - start
    return total


def decoding_cases(
    batch: int,
    min_batches: Sequence[int] = (),
    engines: Sequence[str] = (),
    without_lookahead: bool = False,
) -> list[tuple[str, dict]]:
    """The routed runs of one batch size: random shares, entropy, guessing ahead, speculative
    (batch 1), lockstep (batch > 1); at batch > 1, each pause-and-batch case once more per
    ``llm_min_batch`` in ``min_batches`` (0 is the default rule, already run) and, with
    ``without_lookahead``, once more with ``llm_lookahead=false`` (named '... no lookahead'); then
    every case once more per engine in ``engines`` (named '... engine=NAME')."""
    cases = [
        (f"random r={r}", {"router": "random", "p": str(r)}) for r in (0.0, 0.05, 0.15, 0.3, 1.0)
    ]
    cases += [(f"entropy t={t}", {"router": "entropy", "threshold": str(t)}) for t in (0.1, 0.3)]
    # the same guessing ahead (guess_ahead=4): routed rows go on with the SLM's token until checked
    cases += [
        (f"guess r={r}", {"router": "random", "p": str(r), "guess_ahead": "4"}) for r in (0.15, 0.3)
    ]
    # a per-token router that looks at the SLM: it routes uncertain positions, where guesses fail more
    tok = {"router": "entropy-token", "threshold": "1.5"}
    cases += [
        ("entropy-token t=1.5", tok),
        ("guess entropy-token t=1.5", tok | {"guess_ahead": "4"}),
    ]
    if batch == 1:
        cases.append(("speculative", {"router": "speculative"}))
    else:
        cases += [
            (f"{name} min={m}", extra | {"llm_min_batch": str(m)})
            for name, extra in list(cases)
            for m in min_batches
            if m
        ]
        if without_lookahead:
            cases += [
                (f"{name} no lookahead", extra | {"llm_lookahead": "false"})
                for name, extra in list(cases)
            ]
        cases += [
            (f"lockstep r={r}", {"router": "random", "p": str(r), "schedule": "lockstep"})
            for r in (0.05, 0.15, 0.3)
        ]
    cases += [
        (f"{name} engine={e}", extra | {"engine": e})
        for name, extra in list(cases)
        for e in engines
    ]
    return cases


def bench_decoding(rt_for, args, save: Callable[[dict], None] = lambda decoding: None) -> dict:
    """Per repeat and case: plain LLM ``generate``, the routed run, then its ideal, side by side.

    Absolute speed drifts by a quarter over a minute on shared machines, so every ratio is taken
    between runs made back to back; the table holds the median of each ratio over repeats. Each
    repeat gives the requests other seeds (every case of a repeat the same ones), so the medians
    span several draws of a random router, not one: at 8 rows x 64 tokens one draw's forward count
    can sit 15% off another's. ``save`` gets the table so far after every repeat, so a run cut
    short keeps what it measured.
    """
    base = rt_for({"router": "slm-only"})
    memory = PeakMemory(base.device)
    models = Baselines(base)
    plain = PlainCosts(
        base, models, kv_len=len(requests(base, 1, args.tokens)[0].prompt_ids) + args.tokens // 2
    )
    rows = []
    for batch in args.batches:
        n = args.requests or max(batch, 4)  # several at batch 1, so LLM shares average out
        cases = [
            c
            for c in decoding_cases(
                batch, args.llm_min_batch, args.also_engine, args.also_no_lookahead
            )
            if not args.cases or any(k in c[0] for k in args.cases)
        ]
        samples: dict[str, list[dict]] = defaultdict(list)
        done: list[dict] = []  # this batch's rows over the repeats so far
        # warm-up repeats (GPU: kernel selection for every new shape) run the same work, unrecorded
        for rep in range(-args.warmup, args.repeats):
            started = time.perf_counter()
            record = samples if rep >= 0 else defaultdict(list)
            plain.reset()
            # both models stay loaded: what each plain run adds on top of that is its own peak, and
            # the two plain models run apart would need both weights plus both additions
            held = memory.now()
            llm_s, llm_peak = memory.during(run_plain, models.llm, base, batch, args.tokens, n)
            slm_s, slm_peak = memory.during(run_plain, models.slm, base, batch, args.tokens, n)
            both = None if None in (held, llm_peak, slm_peak) else llm_peak + slm_peak - held
            record["plain slm generate"].append({"speedup_vs_llm_generate": llm_s / slm_s})
            for name, extra in cases:
                llm_s = run_plain(models.llm, base, batch, args.tokens, n)
                models.release()
                run, peak = memory.during(
                    run_routed, rt_for(extra), batch, args.tokens, n, max(rep, 0)
                )
                ideal_s = plain.ideal_s(run["trace"])
                figures = {
                    "llm_share": run["llm_share"],
                    "ratio_vs_ideal": run["wall_s"] / ideal_s,
                    "speedup_vs_llm_generate": llm_s / run["wall_s"],
                    # the speedup the run would have at its ideal (its forwards, nothing else)
                    "ideal_speedup_vs_llm_generate": llm_s / ideal_s,
                    "llm_forwards_per_100_tokens": run["llm_forwards_per_100"],
                }
                if both and peak:
                    figures["peak_memory_vs_plain_pair"] = peak / both
                if run["taken_ahead"] is not None and batch > 1:
                    figures["taken_ahead"] = run["taken_ahead"]
                if run["guesses_right"] is not None:
                    figures["guesses_right"] = run["guesses_right"]
                if name == "speculative":
                    assisted = run_plain(
                        models.llm, base, batch, args.tokens, n, assistant=models.slm
                    )
                    figures["ratio_vs_assisted_generation"] = run["wall_s"] / assisted
                record[name].append(figures)
            versus_lockstep({name: record[name][-1] for name, _ in cases})
            print(
                f"batch {batch}: "
                + (f"repeat {rep + 1}/{args.repeats}" if rep >= 0 else "warm-up")
                + " done"
                f" ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            if rep >= 0:
                done = _rows(batch, samples)
                save({"rows": rows + done, "repeats": args.repeats})
        rows += done
        for row in done:
            print(format_row(row), flush=True)
    return {"rows": rows, "repeats": args.repeats}


def _rows(batch: int, samples: dict[str, list[dict]]) -> list[dict]:
    """One table row per case: medians over the repeats done so far (``repeats_done``)."""
    return [
        {"case": name, "batch": batch, "repeats_done": len(runs), **_medians(runs)}
        for name, runs in samples.items()
    ]


def versus_lockstep(repeat: dict[str, dict]) -> None:
    """Add to each pause-and-batch ``random r=...`` case of one repeat (case name -> figures) how
    many times fewer LLM forwards it made than ``lockstep`` at the same share (and engine) on the
    same draw, where both ran."""
    fwd = "llm_forwards_per_100_tokens"
    for name, figures in repeat.items():
        match = re.fullmatch(r"random (r=\S+)(.*?)( engine=\S+)?", name)
        lock = match and repeat.get(f"lockstep {match[1]}{match[3] or ''}")
        if lock and figures.get(fwd):
            figures["fewer_llm_forwards_than_lockstep"] = lock[fwd] / figures[fwd]


def _medians(samples: list[dict]) -> dict:
    """Median of every figure over repeats, and the spread of the ratios users read."""
    keys = {k for s in samples for k in s}
    out = {k: statistics.median(s[k] for s in samples if k in s) for k in sorted(keys)}
    for key in ("ratio_vs_ideal", "speedup_vs_llm_generate", "fewer_llm_forwards_than_lockstep"):
        if key in samples[0] and len(samples) > 1:
            out[f"{key}_range"] = [min(s[key] for s in samples), max(s[key] for s in samples)]
    return out


def format_row(row: dict) -> str:
    parts = [f"{row['case']:<20} b={row['batch']}"]
    for key, label in (
        ("llm_share", "share"),
        ("ratio_vs_ideal", "meas/ideal"),
        ("speedup_vs_llm_generate", "vs LLM gen"),
        ("ideal_speedup_vs_llm_generate", "ideal vs LLM gen"),
        ("llm_forwards_per_100_tokens", "LLM fwd/100tok"),
        ("fewer_llm_forwards_than_lockstep", "lockstep fwd/these"),
        ("peak_memory_vs_plain_pair", "peak mem/plain pair"),
        ("ratio_vs_assisted_generation", "vs assisted"),
        ("guesses_right", "guesses right"),
        ("taken_ahead", "taken ahead"),
    ):
        if key in row:
            parts.append(f"{label} {row[key]:.2f}")
    return "  ".join(parts)


def bench_lm_eval(args) -> dict:
    """Docs/s of `routed` llm-only against lm-eval's `hf` on the same LLM and a generate_until task."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from lm_eval_routed.adapters.lm_eval_model import RoutedLM

    routed = RoutedLM(
        batch_size=args.lm_eval_batch,
        config=args.config,
        router="llm-only",
        prepack=str(not args.no_prepack),
    )
    rt = routed.runtime
    llm = Baselines(rt).llm
    hf = HFLM(pretrained=llm, tokenizer=routed.tokenizer, batch_size=args.lm_eval_batch)
    with torch.inference_mode():  # its layers pack their weights on first use: not timed
        llm(input_ids=torch.tensor([[rt.start_token_id]], device=rt.device))
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
    ap.add_argument(
        "--requests", type=int, default=0, help="requests per run (default: batch size, at least 4)"
    )
    ap.add_argument(
        "--cases", nargs="+", help="run only cases whose name contains one of these (e.g. r=0.15)"
    )
    ap.add_argument(
        "--llm-min-batch",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="batch > 1: also run each pause-and-batch case at llm_min_batch=N (named '... min=N')",
    )
    ap.add_argument(
        "--also-no-lookahead",
        action="store_true",
        help="batch > 1: also run each pause-and-batch case with llm_lookahead=false",
    )
    for model in ("slm", "llm"):
        ap.add_argument(
            f"--cost-{model}",
            metavar="FIXED:PER_TOKEN",
            help=f"the {model.upper()} forward's cost the schedule prices, in seconds, instead of "
            "measuring it at start-up (forward counts under another machine's costs)",
        )
    ap.add_argument("--dtype", help="both models' dtype (default: the config's, else auto)")
    ap.add_argument("--slm-dtype", help="the SLM's own dtype (default: --dtype)")
    ap.add_argument(
        "--warmup", type=int, help="unrecorded repeats first (default: 1 on GPU, 0 on CPU)"
    )
    ap.add_argument(
        "--attention",
        choices=["auto", "rows", "gather"],
        default="auto",
        help="ragged attention path (cache.py; auto: gather on GPU, rows on CPU)",
    )
    ap.add_argument(
        "--repeat-kv",
        choices=["auto", "yes", "no"],
        default="auto",
        help="repeat grouped KV heads before masked attention (cache.py; auto: where torch has no "
        "fused kernel for the masked call, e.g. CUDA)",
    )
    ap.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="the routed runs' model engine (engine.py, native.py; auto: native where it applies)",
    )
    ap.add_argument(
        "--also-engine",
        choices=ENGINES,
        nargs="+",
        default=[],
        metavar="ENGINE",
        help="also run every case on this engine, back to back (named '... engine=ENGINE')",
    )
    ap.add_argument(
        "--no-prepack",
        action="store_true",
        help="CPU: keep torch's default linear kernels (in the engines and the baselines)",
    )
    ap.add_argument(
        "--task", default="routed_demo", help="generate_until task for the lm-eval comparison"
    )
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--lm-eval-batch", type=int, default=8)
    ap.add_argument("--skip-lm-eval", action="store_true")
    ap.add_argument(
        "--json", type=Path, help="write every figure here (rewritten after every repeat)"
    )
    args = ap.parse_args()

    pinned = {"cost_slm": args.cost_slm, "cost_llm": args.cost_llm}

    def config(extra: dict):
        return load_config(
            {
                "config": args.config,
                **({"dtype": args.dtype} if args.dtype else {}),
                "slm_dtype": args.slm_dtype,
                "prepack": not args.no_prepack,
                "engine": args.engine,
                **{k: v for k, v in pinned.items() if v},  # else the config's, or measured
                **extra,
            }
        )

    if any(m < 0 for m in args.llm_min_batch):
        ap.error("--llm-min-batch takes rows to wait for: 1 or more (0 is the default rule)")
    if args.cases:
        names = {
            name
            for b in args.batches
            for name, _ in decoding_cases(
                b, args.llm_min_batch, args.also_engine, args.also_no_lookahead
            )
        }
        if not any(k in name for k in args.cases for name in names):
            ap.error(f"--cases {' '.join(args.cases)} matches none of: {', '.join(sorted(names))}")
    try:  # a bad --config, --dtype or --cost-* as one line, before any model loads
        base_cfg = config({"router": "slm-only"})
    except ConfigError as err:
        ap.error(str(err))
    first = build_runtime(base_cfg)
    measured = first.decoder.costs  # once (or pinned): every case's schedule reads the same costs
    if args.warmup is None:
        args.warmup = 1 if first.device.type == "cuda" else 0
    gather = {"auto": None, "rows": False, "gather": True}[args.attention]
    repeat_kv = {"auto": None, "yes": True, "no": False}[args.repeat_kv]

    def rt_for(extra: dict) -> RoutedRuntime:
        cfg = with_costs(config(extra), measured)
        rt = build_runtime(cfg, slm=first.slm, llm=first.llm, tokenizer=first.tokenizer)
        rt.decoder.slm.gather = rt.decoder.llm.gather = gather
        if repeat_kv is not None:  # auto: each engine asked torch's dispatcher when it was built
            rt.decoder.slm.repeat_kv = rt.decoder.llm.repeat_kv = repeat_kv
        return rt

    report = {
        "device": str(first.device),
        "dtype": str(first.dtype),
        "slm_dtype": str(first.slm_dtype),
        "prepacked": first.prepacked,
        "engine": args.engine,
        "engines_used": first.info()["routed"]["engine"],
        "attention": args.attention,
        "repeat_kv": args.repeat_kv,
        "repeat_kv_heads": first.decoder.llm.repeat_kv if repeat_kv is None else repeat_kv,
        "warmup": args.warmup,
        "costs": {"slm": list(measured.slm), "llm": list(measured.llm)},  # the schedule's
        "tokens": args.tokens,
        "complete": False,
    }

    def save(decoding: dict) -> None:
        # written after every repeat: a run cut short (a time limit, a crash) keeps what it measured
        report["decoding"] = decoding
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    decoding = bench_decoding(rt_for, args, save)
    if not args.skip_lm_eval:
        report["lm_eval"] = bench_lm_eval(args)
    report["complete"] = True
    save(decoding)
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
