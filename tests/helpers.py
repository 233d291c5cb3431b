"""Tiny stand-ins shared by the tests: a character tokenizer and random Llama models."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# CI (.ci/run -> scripts/test.sh) installs everything the suite needs: there a missing dependency is
# a failure, never a skip that would leave its test unrun on every push.
IN_CI = os.environ.get("CI") == "true"


def missing(reason: str) -> NoReturn:
    """Skip the test for a dependency this machine lacks; under ``CI=true``, fail instead."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: scripts/test.sh installs it, so this is a failure)")
    pytest.skip(reason)


def require(module: str) -> ModuleType:
    """Import ``module``, or skip (fail under ``CI=true``) where it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing(f"{module} is not installed ({err})")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, plus <unk> and <eos>."""
    vocab = {"<unk>": 0, "<eos>": 1}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )


def tiny_llama(layers: int, seed: int, vocab: int = 98, hidden: int = 64) -> LlamaForCausalLM:
    """A random Llama whose logits are sharp enough that greedy ties do not happen."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        eos_token_id=1,
        bos_token_id=0,
        pad_token_id=1,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).eval()


TASK = """\
task: tiny_routed
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""

MC_TASK = """\
task: tiny_routed_mc
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_choice: ["yes", "no"]
doc_to_target: 0
metric_list:
  - metric: acc
"""


def write_workspace(root: Path) -> Path:
    """Save a tiny SLM/LLM pair and two tiny lm-eval tasks (generate_until, multiple choice)."""
    tok = char_tokenizer()
    for name, layers, seed in (("slm", 1, 1), ("llm", 2, 2)):
        tiny_llama(layers, seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    data = root / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"q": f"{i}+{i}", "a": str(2 * i)}) + "\n" for i in range(4))
    )
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(TASK.format(data=data))
    (tasks / "tiny_mc.yaml").write_text(MC_TASK.format(data=data))
    return root


def one_line(err, needle: str) -> str:
    """The text of a raised error (a ``pytest.ExceptionInfo``), checked to be one line holding
    ``needle`` and no traceback."""
    text = str(err.value)
    assert needle in text, text
    assert "\n" not in text and "Traceback" not in text, text
    return text


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (relative) with a file's bytes, None for a folder: two snapshots
    compare equal only when nothing under ``root`` was made, removed or changed."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }
