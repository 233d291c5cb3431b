"""A tiny SLM/LLM pair saved to folders, loaded back the way `lm-eval-routed train` loads a user's."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import char_tokenizer, tiny_llama
from transformers import PreTrainedTokenizerFast

SPECIAL = (0, 1)  # <unk>, <eos>: never put into a reference text


def near_pair(eps: float = 0.5) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(slm, llm): the LLM is the SLM plus a second layer whose outputs are scaled by ``eps``, so the
    two agree on the next token at some positions and not at others (both kinds occur)."""
    slm = tiny_llama(1, seed=1)
    llm = tiny_llama(2, seed=2)
    state = llm.state_dict()
    for key, value in slm.state_dict().items():
        state[key] = value.clone()
    for key in state:
        if key.startswith("model.layers.1.") and key.endswith(
            ("o_proj.weight", "down_proj.weight")
        ):
            state[key] = state[key] * eps
    llm.load_state_dict(state)
    return slm, llm.eval()


def save(root: Path, models: dict[str, torch.nn.Module]) -> dict[str, str]:
    """Save each model with the character tokenizer under ``root/<name>``; their folders by name."""
    tok = char_tokenizer()
    out = {}
    for name, model in models.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


@torch.inference_mode()
def next_tokens(model: torch.nn.Module, ids: list[int]) -> list[int]:
    """The model's greedy next token after every prefix of ``ids`` (plain Hugging Face forward)."""
    return model(torch.tensor([ids])).logits[0].argmax(-1).tolist()


def encode(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return tok(text, add_special_tokens=False)["input_ids"]
