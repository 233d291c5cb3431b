"""Write a pair at the papers' cost ratio: Qwen2-family shapes on the demo tokenizer, random weights.

The demo pair's SLM costs 0.27 of its LLM per token; the papers' pairs are far more lopsided (R2R:
1.5B beside 32B). This writes two folders holding only a config and the demo tokenizer (SmolLM2's,
49152 tokens); ``random:FOLDER`` models draw their weights when loaded, seeded, directly where they
will run, so a 32B-shaped LLM needs no 64 GB of weights on disk. Only speed figures mean anything.

Pairs (``--pair``):
  cpu       the LLM has Qwen2.5-0.5B's shape (896 wide, 24 layers, 14 query heads over 2 KV heads),
            the largest of the family's real shapes whose benchmark stays within a few GB on a 24 GB
            machine (docs/performance.md); the SLM is a 2-layer, 256-wide Qwen2 whose decode step
            costs near a twentieth of the LLM's on a CPU with native bf16 units (``--measure``
            prints the ratio; a smaller SLM saves little more: Python and small ops set its floor)
  r2r-32b   Qwen2.5-1.5B's shape beside Qwen2.5-32B's (R2R's pair, about 0.05), for a GPU
  r2r-14b   Qwen2.5-1.5B's shape beside Qwen2.5-14B's
  rstitch-7b  Qwen2.5-1.5B's shape beside Qwen2.5-7B's (R-Stitch's smallest pair)

    python scripts/build_scale_pair.py scale/ --measure            # the cpu pair, and its cost ratio
    OMP_NUM_THREADS=1 python scripts/build_scale_pair.py scale/ --measure   # CPU time: a busy machine
    python scripts/bench_decoder.py --config scale/pair.yaml --skip-lm-eval \\
        --cases "random r=0.05" "random r=0.15" "random r=0.3" lockstep "plain slm"
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, DynamicCache, Qwen2Config

from lm_eval_routed.loading.demo_pair import gguf_path
from lm_eval_routed.loading.models import load_model


@dataclass(frozen=True)
class Shape:
    """The parts of a Qwen2 config that set a model's cost."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    tie_word_embeddings: bool


QWEN25_05B = Shape(896, 24, 14, 2, 4864, True)
QWEN25_15B = Shape(1536, 28, 12, 2, 8960, False)  # untied, as R1-Distill-Qwen-1.5B
QWEN25_7B = Shape(3584, 28, 28, 4, 18944, False)
QWEN25_14B = Shape(5120, 48, 40, 8, 13824, False)
QWEN25_32B = Shape(5120, 64, 40, 8, 27648, False)
PAIRS = {
    "cpu": (Shape(256, 2, 4, 2, 1024, True), QWEN25_05B),
    "r2r-32b": (QWEN25_15B, QWEN25_32B),
    "r2r-14b": (QWEN25_15B, QWEN25_14B),
    "rstitch-7b": (QWEN25_15B, QWEN25_7B),
}


def write_pair(out: Path, pair: str, dtype: str, tokenizer=None) -> Path:
    """Write ``out/slm``, ``out/llm`` (config + tokenizer: the demo's unless given) and
    ``out/pair.yaml``; returns the YAML's path."""
    if tokenizer is None:
        gguf = gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for seed, (name, shape) in enumerate(zip(("slm", "llm"), PAIRS[pair]), start=1):
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            max_position_embeddings=32768,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            random_seed=seed,  # random: models draw their weights from it (models.py)
            **asdict(shape),
        )
        config.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    pair_yaml = out / "pair.yaml"
    fields = {name: f"random:{(out / name).resolve()}" for name in ("slm", "llm")}
    pair_yaml.write_text(yaml.safe_dump({**fields, "dtype": dtype}))
    return pair_yaml


@torch.inference_mode()
def step_times(models: dict, batch: int, rounds: int, context: int = 64) -> dict[str, float]:
    """Median wall time of one decode step per model over a warm ``context``-token cache, the
    models interleaved round by round so both see the same machine."""
    caches = {}
    for name, model in models.items():
        caches[name] = DynamicCache(config=model.config)
        ids = torch.zeros(batch, context, dtype=torch.long)
        model(input_ids=ids, past_key_values=caches[name], use_cache=True)
    ids = torch.zeros(batch, 1, dtype=torch.long)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, model in models.items():
            start, cpu = time.perf_counter(), time.thread_time()
            model(input_ids=ids, past_key_values=caches[name], use_cache=True, logits_to_keep=1)
            times.setdefault((name, "wall"), []).append(time.perf_counter() - start)
            times.setdefault((name, "cpu"), []).append(time.thread_time() - cpu)
            caches[name].crop(-1)
    return {f"{name} {kind}": statistics.median(t) for (name, kind), t in times.items()}


def measure(pair_yaml: Path, rounds: int) -> None:
    """Print each model's decode step and their ratio at batch 1 and 8 (prepacked, as runs are)."""
    from lm_eval_routed.core.cpu_linear import prepack_linears

    spec = yaml.safe_load(pair_yaml.read_text())
    dtype = getattr(torch, spec["dtype"])
    models = {}
    for name in ("slm", "llm"):
        models[name], _ = load_model(spec[name], dtype, torch.device("cpu"))
        prepack_linears(models[name])
        params = sum(p.numel() for p in models[name].parameters())
        print(f"{name}: {params / 1e6:.1f}M parameters", flush=True)
    # With one thread the step's CPU time is its cost even while other processes share the cores
    # (they inflate wall time, op by op); with more, threads that wait count too.
    single = torch.get_num_threads() == 1
    for batch in (1, 8):
        t = step_times(models, batch, rounds)
        line = (
            f"batch {batch}: SLM step {t['slm wall'] * 1e3:.1f} ms, LLM step "
            f"{t['llm wall'] * 1e3:.1f} ms, cost ratio {t['slm wall'] / t['llm wall']:.3f}"
        )
        if single:
            line += (
                f"; CPU time {t['slm cpu'] * 1e3:.1f} / {t['llm cpu'] * 1e3:.1f} ms, "
                f"ratio {t['slm cpu'] / t['llm cpu']:.3f}"
            )
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path, help="folder to write slm/, llm/ and pair.yaml into")
    ap.add_argument("--pair", choices=sorted(PAIRS), default="cpu")
    ap.add_argument("--dtype", default="bfloat16", help="the pair's dtype (pair.yaml)")
    ap.add_argument(
        "--measure",
        action="store_true",
        help="then time both models' decode steps on the CPU and print their cost ratio",
    )
    ap.add_argument("--rounds", type=int, default=20, help="--measure: interleaved steps per model")
    args = ap.parse_args()
    pair_yaml = write_pair(args.out, args.pair, args.dtype)
    print(f"wrote {pair_yaml}", flush=True)
    if args.measure:
        measure(pair_yaml, args.rounds)


if __name__ == "__main__":
    main()
