"""Shared fixtures: a character tokenizer and a pair of tiny random Llama models that share it."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lm_eval_routed.config import load_config
from lm_eval_routed.runtime import build_runtime

torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="session")
def pair():
    """(slm, llm): 1 and 3 layers, same vocabulary, different weights."""
    return tiny_llama(1, seed=1), tiny_llama(3, seed=2)


@pytest.fixture
def make_runtime(pair, tokenizer):
    """Build a RoutedRuntime over the tiny pair from model_args-style keys."""

    def build(**args):
        cfg = load_config({"cost_slm": "0.001:0.0001", "cost_llm": "0.01:0.001", **args})
        return build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tokenizer)

    return build
