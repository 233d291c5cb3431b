"""What the decoder takes and gives (``GenRequest``, ``GenResult``) and the state of one row in flight."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lm_eval_routed.accounting import SampleRecord, SampleTally


@dataclass(frozen=True)
class GenRequest:
    """One sample to generate: prompt token ids plus its own generation settings."""

    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # per-sample: sampling and random routing never depend on the batch
    key: dict = field(default_factory=dict)  # accounting key (task, doc_id, repeat, prompt_hash)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("GenRequest needs at least one prompt token (e.g. the BOS token)")


@dataclass(frozen=True)
class GenResult:
    """Generated text (cut at the first stop string), its tokens, why it ended, and its accounting."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" or "length"
    record: SampleRecord


@dataclass
class Row:
    """Decoding state of one sample occupying one cache slot."""

    index: int
    req: GenRequest
    slot: int
    seq: list[int]  # prompt + committed tokens
    n_prompt: int
    sample_gen: torch.Generator
    route_gen: torch.Generator
    slm_len: int = 0  # tokens held in the SLM cache
    llm_len: int = 0  # tokens held in the LLM cache
    waiting: bool = False  # the next position (or the drafts) waits for the LLM
    gamma: int = 0  # speculative: this row's current draft length (adapts to its acceptance)
    drafts: list[int] = field(default_factory=list)  # unverified SLM tokens (speculative, guesses)
    draft_probs: list[Tensor] = field(default_factory=list)
    guesses: list[int] = field(default_factory=list)  # drafts at positions routed to the LLM
    route_states: list[Tensor] = field(default_factory=list)  # route_gen after each guess's draw
    passed: int | None = None  # the SLM token a waiting row dropped (measures how guesses would do)
    # The LLM's logits and hidden state at position ahead[0], from a forward the row rode along in:
    # valid while the row holds exactly ahead[0] tokens (llm_lookahead).
    ahead: tuple[int, Tensor, Tensor] | None = None
    finish: str | None = None
    tally: SampleTally = field(default_factory=SampleTally)

    def unseen(self, held: int) -> list[int]:
        """Committed tokens and drafts after the first ``held`` (what a model has not processed).

        Sliced without building ``seq + drafts``: rows run to thousands of tokens, and this is
        called for every row at every step.
        """
        if held <= len(self.seq):
            return self.seq[held:] + self.drafts
        return self.drafts[held - len(self.seq) :]

    @property
    def generated(self) -> int:
        return len(self.seq) - self.n_prompt

    @property
    def left(self) -> int:
        """Tokens the row may still write: its budget less what it has written."""
        return self.req.max_new_tokens - self.generated


def seeded_generator(seed: int, salt: str, device: torch.device | str) -> torch.Generator:
    """A generator seeded from ``seed`` and a purpose (``salt``): one stream per sample and use."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
