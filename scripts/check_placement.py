"""Decode with the LLM placed over devices (``llm_device_map``) and, beside it, with the LLM whole on
one device: same tokens? how fast? where did each layer run?

Both runs decode the same requests (EOS disabled, so every row writes ``--tokens``) with the same
router; tokens are compared row by row, wall times are taken back to back. ``--split K --to DEV``
builds the map for the usual decoder layout: layers K and up on DEV, everything else on ``--device``.
Random-weight models (``random:`` folders) draw their weights where they first live, so a placed and
a whole copy differ: there, ``--no-whole`` runs the placed one alone.

    python scripts/check_placement.py --config demo --split 15 --to disk --offload-folder off/
    python scripts/check_placement.py --config demo --device cuda:0 --split 15 --to cpu   # a GPU
    python scripts/check_placement.py --config scale/pair.yaml --llm-device-map auto --no-whole
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.placement import empty_model
from lm_eval_routed.loading.runtime import RoutedRuntime, build_runtime

PROMPTS = [
    "Explain why the sky is blue.",
    "Write a haiku about autumn.",
    "List three prime numbers and say why they are prime.",
    "Describe a train journey in two sentences.",
]


def split_map(cfg_args: dict, first: int, to: str) -> str:
    """``--split``: decoder layers ``first`` and up on ``to``; everything else on the run's device."""
    from transformers import AutoConfig

    from lm_eval_routed.loading.models import load_model

    llm = load_config(cfg_args).llm
    if llm.startswith("demo:"):  # built in memory from the package: its config comes with it
        config = load_model(llm, torch.float32, torch.device("cpu"))[0].config
    else:
        config = AutoConfig.from_pretrained(llm.removeprefix("random:"))
    empty = empty_model(config, torch.float32)
    layers = empty.get_decoder().layers
    prefix = next(n for n, m in empty.named_modules() if m is layers)  # e.g. model.layers
    base_name = prefix.rpartition(".")[0]
    home = cfg_args.get("device") or ("cuda:0" if torch.cuda.is_available() else "cpu")
    out = {n: home for n, _ in empty.named_children() if n != base_name}
    for n, _ in empty.get_submodule(base_name).named_children():
        out[f"{base_name}.{n}"] = home
    out |= {f"{prefix}.{i}": (to if i >= first else home) for i in range(len(layers))}
    del out[prefix]
    return json.dumps(out)


def decode(rt: RoutedRuntime, n: int, tokens: int) -> tuple[list[list[int]], float]:
    """Token ids of ``n`` requests and the wall time of decoding them."""
    tok = rt.tokenizer
    reqs = []
    for i in range(n):
        chat = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        reqs.append(GenRequest(rt.encode(text, tokens), tokens, seed=i))
    rt.decoder.eos_ids = set()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = rt.generate(reqs)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return [r.token_ids for r in out], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="demo", help="preset or YAML holding slm/llm")
    ap.add_argument(
        "--device", help="the SLM's device (and the whole LLM's); default: the config's"
    )
    ap.add_argument("--llm-device-map", help="as the model_arg (auto, a JSON map, ...)")
    ap.add_argument("--split", type=int, metavar="K", help="layers K and up go to --to")
    ap.add_argument("--to", default="cpu", help="--split: their device (cpu, disk, 1, ...)")
    ap.add_argument("--max-memory")
    ap.add_argument("--offload-folder")
    ap.add_argument("--router", default="random")
    ap.add_argument("--p", default="0.15", help="random router: LLM share")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-whole", action="store_true", help="run the placed LLM only")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    base = {"config": args.config, "router": args.router, "p": args.p, "batch_size": args.batch}
    if args.device:
        base["device"] = args.device
    placed_args = {"max_memory": args.max_memory, "offload_folder": args.offload_folder}
    if args.llm_device_map is None and args.split is None:
        ap.error("give --llm-device-map or --split")
    try:
        device_map = args.llm_device_map or split_map(base, args.split, args.to)
        placement = {k: v for k, v in placed_args.items() if v}
        placed = build_runtime(load_config({**base, "llm_device_map": device_map, **placement}))
    except ConfigError as err:
        raise SystemExit(f"check_placement: {err}") from None
    info = placed.info()["routed"]
    report = {"placement": info["placement"], "engine": info["engine"]}
    print("placement:", json.dumps(report["placement"]), "engine:", report["engine"], flush=True)
    decode(placed, 1, 2)  # warm-up: first-use costs (kernel choice, packing) off the clock
    tokens, report["placed_s"] = decode(placed, args.requests, args.tokens)
    if torch.cuda.is_available():
        report["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if not args.no_whole:
        whole = build_runtime(load_config(base))
        decode(whole, 1, 2)
        want, report["whole_s"] = decode(whole, args.requests, args.tokens)
        report["same_rows"] = sum(a == b for a, b in zip(tokens, want))
        report["rows"] = len(want)
        report["placed_over_whole_time"] = report["placed_s"] / report["whole_s"]
    print(json.dumps({k: v for k, v in report.items() if k != "placement"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
