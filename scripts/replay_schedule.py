"""Replay the mixed decoder's schedule on stand-in models: LLM forward counts over many draws.

A blind router (``random`` at rate r) decides before the SLM runs, so which rows wait and when the
LLM runs follow from its draws, the costs the schedule prices and the rows' lengths alone, not from
what the models compute. This script drives the real ``MixedDecoder`` with stand-in engines that
answer at once (constant logits; each request ends on EOS after a length drawn up front, or runs to
its budget), so it makes the forwards the decoder makes on the real pair with the same costs, over
dozens of draws in seconds where the benchmark takes minutes a draw. Each forward is then priced on a
second cost model (``--time-slm`` / ``--time-llm``) for a modeled throughput. What it cannot show:
Python's own time per step, and routers that read the SLM.

Prints, per LLM share and sample, against lockstep on the same draws: LLM forwards per 100 tokens,
how many times fewer pause-and-batch made (median and range over the draws), and the modeled
throughput of each.

    python scripts/replay_schedule.py                                 # the demo pair's CPU costs
    python scripts/replay_schedule.py --p 0.15 --samples 8x64 --draws 200
    python scripts/replay_schedule.py --cost-slm 0.001845:0.0000002 --cost-llm 0.01:0.000001 \\
        --time-slm 0.001845:0.0000002 --time-llm 0.01:0.000001          # GPU-shaped costs
    python scripts/replay_schedule.py --eos-rate 0.03                 # rows end on EOS, not budget
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.accounting import CostModel, ParamSizes
from lm_eval_routed.core.decoder import MixedDecoder
from lm_eval_routed.core.engine import ForwardOut
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.core.schedule import Schedule, decode_options
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.routers.base import RouterKind
from lm_eval_routed.routers.static import Random

EOS = 1
PROMPT = 45  # tokens per prompt, about the benchmark's chat prompts (40-50 on the demo tokenizer)

# The demo pair on a 2-core CPU, fp32, native engine: the start-up cost model the schedule prices
# by default, and the costs profiled over benchmark runs (docs/performance.md, "When the LLM runs").
START_UP = {"slm": "0.0084:0.00013", "llm": "0.031:0.00087"}
PROFILED = {"slm": "0.007:0.00055", "llm": "0.032:0.0018"}


class StandIn:
    """An engine that answers at once: token 0 everywhere, EOS where a request's drawn length ends.

    A request is told by its prompt (every prompt token is ``2 + its index``), so its length holds
    whichever slot it lands in and whichever model writes its tokens: both schedules make the same
    tokens, and their forward counts compare draw by draw.
    """

    device = torch.device("cpu")

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths  # tokens each request writes, its EOS included
        self.vocab = len(lengths) + 2
        self.owner: dict[int, int] = {}  # slot -> request index

    def new_cache(self, batch: int, capacity: int) -> None:
        self.owner = {}

    def forward(self, cache, rows, lengths, tokens, all_logits=False, at=None, whole_head=False):
        """Logits at each asked position: EOS where the request's next token is its last."""
        if all_logits:
            at = [list(range(len(t))) for t in tokens]
        asked = at or [[len(t) - 1] for t in tokens]
        logits = torch.zeros(len(rows), max(map(len, asked)), self.vocab)
        for i, (slot, held, new) in enumerate(zip(rows, lengths, tokens)):
            if held == 0:
                self.owner[slot] = new[0] - 2
            request = self.owner[slot]
            for k, j in enumerate(asked[i]):
                written = held + j + 1 - PROMPT  # generated tokens before the one these logits pick
                if written == self.lengths[request] - 1:
                    logits[i, k, EOS] = 1.0
        hidden = torch.zeros(len(rows), 1)
        return ForwardOut(logits[:, 0] if at is None else logits, hidden)


class Silent:
    """Tokenizer stand-in: results need a decode, nobody reads the text."""

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return ""


def replay(
    p: float, n: int, tokens: int, draw: int, args, lockstep: bool
) -> tuple[int, int, float]:
    """One run: (LLM forwards, tokens generated, modeled seconds)."""
    rng = random.Random(f"{draw}:lengths")
    lengths = [
        min(tokens, 1 + int(rng.expovariate(args.eos_rate))) if args.eos_rate else tokens + 1
        for _ in range(n)
    ]
    engines = StandIn(lengths), StandIn(lengths)
    decoder = MixedDecoder(
        *engines,
        Random(p),
        Silent(),
        args.costs,
        params=ParamSizes(1, 1),
        eos_ids={EOS},
        options=decode_options(
            RouterKind.TOKEN,
            Schedule.LOCKSTEP if lockstep else Schedule.PAUSE,
            args.llm_min_batch,
            0,
            not args.no_lookahead,
        ),
    )
    decoder.trace = []
    reqs = [GenRequest([2 + i] * PROMPT, tokens, seed=draw * n + i) for i in range(n)]
    written = sum(r.record.tokens for r in decoder.generate(reqs, args.batch))
    seconds = sum(args.timing.forward_s(model, sum(fed)) for model, fed in decoder.trace)
    forwards = sum(1 for model, _ in decoder.trace if model == "llm")
    return forwards, written, seconds


def compare(p: float, n: int, tokens: int, args) -> dict:
    """Pause-and-batch against lockstep over ``args.draws`` draws of the router."""
    runs = {
        name: [replay(p, n, tokens, d, args, name == "lockstep") for d in range(args.draws)]
        for name in ("pause", "lockstep")
    }
    fewer = [lock[0] / max(pause[0], 1) for pause, lock in zip(runs["pause"], runs["lockstep"])]

    def per_100(name: str) -> float:
        return 100 * sum(r[0] for r in runs[name]) / sum(r[1] for r in runs[name])

    def tokens_per_s(name: str) -> float:
        return sum(r[1] for r in runs[name]) / sum(r[2] for r in runs[name])

    return {
        "p": p,
        "sample": f"{n}x{tokens}",
        "llm_forwards_per_100_tokens": round(per_100("pause"), 3),
        "lockstep_llm_forwards_per_100_tokens": round(per_100("lockstep"), 3),
        "fewer_than_lockstep": round(statistics.median(fewer), 3),
        "fewer_than_lockstep_range": [round(min(fewer), 3), round(max(fewer), 3)],
        "modeled_tokens_per_s": round(tokens_per_s("pause"), 1),
        "lockstep_modeled_tokens_per_s": round(tokens_per_s("lockstep"), 1),
    }


def sample(text: str) -> tuple[int, int]:
    """``NxT``: N requests of T tokens."""
    try:
        n, tokens = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write a sample as REQUESTSxTOKENS, e.g. 8x64"
        ) from None
    if n < 1 or tokens < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: requests and tokens must be at least 1")
    return n, tokens


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--p", type=float, nargs="+", default=[0.05, 0.15, 0.3], help="LLM shares")
    ap.add_argument("--samples", type=sample, nargs="+", default=[(8, 64), (32, 128)])
    ap.add_argument("--draws", type=int, default=40, help="draws of the router per sample")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--llm-min-batch", type=int, default=0, help="0: the cost rule")
    ap.add_argument("--no-lookahead", action="store_true", help="rows do not ride along")
    ap.add_argument("--eos-rate", type=float, default=0.0, help="chance a token is EOS (0: none)")
    for model in ("slm", "llm"):
        ap.add_argument(f"--cost-{model}", default=START_UP[model], metavar="FIXED:PER_TOKEN")
        ap.add_argument(f"--time-{model}", default=PROFILED[model], metavar="FIXED:PER_TOKEN")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    if not all(0 <= p <= 1 for p in args.p):
        ap.error("--p: each LLM share must lie in [0, 1]")
    if args.draws < 1 or args.batch < 1 or not 0 <= args.eos_rate < 1:
        ap.error("--draws and --batch must be at least 1, --eos-rate in [0, 1)")
    priced = {}
    for flag in ("cost_slm", "cost_llm", "time_slm", "time_llm"):
        model = "cost_" + flag[-3:]
        try:  # read as the model_args cost_slm / cost_llm are
            priced[flag] = getattr(load_config({model: getattr(args, flag)}), model)
        except ConfigError:
            ap.error(
                f"--{flag.replace('_', '-')} {getattr(args, flag)!r}: "
                "want FIXED:PER_TOKEN, two numbers of seconds >= 0, e.g. 0.031:0.00087"
            )
    args.costs = CostModel(priced["cost_slm"], priced["cost_llm"])
    args.timing = CostModel(priced["time_slm"], priced["time_llm"])
    rows = []
    print("p     sample   LLM fwd/100tok  lockstep  fewer than lockstep  tok/s (modeled)  lockstep")
    for n, tokens in args.samples:
        for p in args.p:
            row = compare(p, n, tokens, args)
            rows.append(row)
            low, high = row["fewer_than_lockstep_range"]
            print(
                f"{p:<5} {row['sample']:<8} {row['llm_forwards_per_100_tokens']:>14.2f} "
                f"{row['lockstep_llm_forwards_per_100_tokens']:>9.2f} "
                f"{row['fewer_than_lockstep']:>10.2f}x ({low:.2f}-{high:.2f}) "
                f"{row['modeled_tokens_per_s']:>15.1f} {row['lockstep_modeled_tokens_per_s']:>9.1f}"
            )
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("costs", "timing", "json")}
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
