"""Check that greedy outputs do not depend on the schedule on this device and dtype.

Each policy decodes the same prompts greedily at batch 1, at batch 8 (the default schedule, on the
costs measured at start-up), and at batch 8 with the LLM run as soon as one row waits
(``llm_min_batch=1``); the script prints how many samples came out token for token
the same as at batch 1, and how far the others agree. ``llm-only`` is the reference: it runs no routing,
so where it differs the device's kernels already round a row differently with other rows beside it
(GPU GEMMs pick their tiling by row count), and routed rows cannot do better than that.

    python scripts/check_schedule_invariance.py                        # demo pair, CPU fp32
    python scripts/check_schedule_invariance.py --dtype bfloat16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's prompts
from bench_decoder import requests  # noqa: E402

from lm_eval_routed.config import ENGINES
from lm_eval_routed.config_args import load_config
from lm_eval_routed.loading.runtime import build_runtime, with_costs  # noqa: E402

POLICIES = {
    "llm-only": {"router": "llm-only"},
    "random r=0.15": {"router": "random", "p": "0.15"},
    "entropy-token t=1.5": {"router": "entropy-token", "threshold": "1.5"},
    "guess entropy-token t=1.5": {
        "router": "entropy-token",
        "threshold": "1.5",
        "guess_ahead": "4",
    },
    "r2r (demo router)": {"router": "r2r", "router_ckpt": "router_ckpts/demo-r2r"},
    "entropy stitch t=0.1": {"router": "entropy", "threshold": "0.1"},
    "speculative": {"router": "speculative"},
}
SCHEDULES = {"batch 8": (8, 0), "batch 8, llm_min_batch=1": (8, 1)}


def common_prefix(a: list[int], b: list[int]) -> int:
    """Tokens two outputs share from the start."""
    return len(os.path.commonprefix([a, b]))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="demo", help="preset or YAML holding slm/llm")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--slm-dtype", help="the SLM's own dtype (default: --dtype)")
    ap.add_argument("--engine", choices=ENGINES, default="auto", help="the models' engine")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=96, help="max new tokens per sample")
    ap.add_argument("--policies", nargs="+", help="only policies whose name contains one of these")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    chosen = [n for n in POLICIES if not args.policies or any(k in n for k in args.policies)]
    if not chosen:
        sys.exit(f"--policies {' '.join(args.policies)} matches none of: {', '.join(POLICIES)}")
    base = {
        "config": args.config,
        "dtype": args.dtype,
        "slm_dtype": args.slm_dtype,
        "engine": args.engine,
    }
    first = build_runtime(load_config(base))
    rows = []
    for name in chosen:
        rt = build_runtime(
            with_costs(load_config({**base, **POLICIES[name]}), first.decoder.costs),
            slm=first.slm,
            llm=first.llm,
            tokenizer=first.tokenizer,
        )
        reqs = requests(rt, args.requests, args.tokens)
        reference = [r.token_ids for r in rt.decoder.generate(reqs, 1)]
        for schedule, (batch, min_batch) in SCHEDULES.items():
            rt.decoder.schedule.min_batch = min_batch
            got = [r.token_ids for r in rt.decoder.generate(reqs, batch)]
            same = sum(a == b for a, b in zip(reference, got))
            agree = [common_prefix(a, b) / max(len(a), 1) for a, b in zip(reference, got)]
            row = {
                "policy": name,
                "schedule": schedule,
                "identical": same,
                "samples": len(reqs),
                "mean_agreed_share": sum(agree) / len(agree),
            }
            rows.append(row)
            print(
                f"{name:<26} {schedule:<26} identical to batch 1: {same}/{len(reqs)}"
                f"  (tokens agreed before the first difference: {row['mean_agreed_share']:.0%})",
                flush=True,
            )
    if args.json:
        report = {
            "device": str(first.device),
            "dtype": str(first.dtype),
            "slm_dtype": str(first.slm_dtype),
            "engines_used": first.info()["routed"]["engine"],
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
