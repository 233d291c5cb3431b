"""Write a launch-bound stand-in for the demo pair: tiny random models on the demo's tokenizer.

A 135M model on a GPU is bound by Python and kernel launches, not by arithmetic, so decoding overhead
there shows up as a larger measured / ideal than on the CPU. Models this small (hidden size 72) are
bound the same way on a CPU: every forward costs about its op count, which lets the decoder's
orchestration be measured and trimmed without a GPU. The LLM keeps the demo LLM's 30 layers and 9
query heads over 3 KV heads, the SLM the student's 4 layers; the weights are random, so only speed
figures mean anything. Torch's CPU kernels differ from CUDA's (no math fallback for masked grouped
heads, no host-device syncs), so confirm on a GPU what this finds.

    python scripts/build_proxy_pair.py proxy/
    python scripts/bench_decoder.py --config proxy/pair.yaml --attention gather --batches 8 --skip-lm-eval
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lm_eval_routed.loading.demo_pair import gguf_path

LAYERS = {"slm": 4, "llm": 30}  # the demo student's and the demo LLM's depth


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path, help="folder to write slm/, llm/ and pair.yaml into")
    ap.add_argument("--hidden", type=int, default=72, help="hidden size (a multiple of 9 heads)")
    args = ap.parse_args()
    if args.hidden % 9:
        ap.error(f"--hidden {args.hidden} is not a multiple of the 9 attention heads")
    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for name, layers in LAYERS.items():
        torch.manual_seed(layers)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden,
            intermediate_size=args.hidden * 8 // 3,
            num_hidden_layers=layers,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        LlamaForCausalLM(config).save_pretrained(args.out / name)
        tokenizer.save_pretrained(args.out / name)
    pair = {name: str((args.out / name).resolve()) for name in LAYERS}
    (args.out / "pair.yaml").write_text(yaml.safe_dump(pair))
    print(f"wrote {args.out / 'pair.yaml'}")


if __name__ == "__main__":
    main()
