"""What the decoder takes and gives (``GenRequest``, ``GenResult``) and the state of one row in flight."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lm_eval_routed.core.accounting import Model, ParamSizes, SampleRecord, SampleTally


@dataclass(frozen=True)
class GenRequest:
    """One sample to generate: prompt token ids plus its own generation settings."""

    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # keep the k most likely tokens (ties at the k-th all stay); 0 keeps all
    top_p: float = 1.0
    seed: int = 0  # per-sample: sampling and random routing never depend on the batch
    key: dict = field(default_factory=dict)  # accounting key (task, doc_id, repeat, prompt_hash)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("GenRequest needs at least one prompt token (e.g. the BOS token)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(
                f"GenRequest top_k={self.top_k!r} must be a whole number >= 0 (0: off)"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenRequest top_p={self.top_p!r} must be in (0, 1]")
        if not self.temperature > 0:
            raise ValueError(f"GenRequest temperature={self.temperature!r} must be > 0")


@dataclass(frozen=True)
class GenResult:
    """Generated text (cut at the first stop string), its tokens, why it ended, and its accounting."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" or "length"
    record: SampleRecord


@dataclass(frozen=True)
class Prediction:
    """The LLM's logits and hidden state for a row's next position, from a forward the row rode
    along in (``riding.py``): at hand while the row holds exactly ``position`` committed tokens."""

    position: int
    logits: Tensor  # (V,)
    hidden: Tensor  # (H,)


@dataclass
class Unchecked:
    """SLM tokens a row holds that the LLM has not checked yet.

    Speculative drafts (``drafts.py``) wait for the LLM's verification; guesses (``guesses.py``) are
    SLM tokens at positions routed to the LLM, kept so the row goes on decoding, with the tokens after
    them. Either way they are not committed: the LLM's step commits or drops them.
    """

    tokens: list[int] = field(default_factory=list)
    # speculative: the distribution each draft was sampled from (None when greedy)
    probs: list[Tensor | None] = field(default_factory=list)
    guesses: list[int] = field(default_factory=list)  # indices into ``tokens`` routed to the LLM
    route_states: list[Tensor] = field(default_factory=list)  # route_gen right after each guess
    gamma: int = 0  # speculative: the row's draft length (adapts to its acceptance)
    # The SLM token a waiting row dropped: scored against the LLM's token, so a run learns how its
    # guesses would do even while it does not guess.
    dropped: int | None = None


@dataclass
class Row:
    """Decoding state of one sample occupying one cache slot."""

    index: int  # the request's place in the caller's list
    req: GenRequest
    slot: int
    seq: list[int]  # prompt + committed tokens
    sample_gen: torch.Generator
    route_gen: torch.Generator
    cached: dict[Model, int] = field(default_factory=lambda: {Model.SLM: 0, Model.LLM: 0})
    waiting: bool = False  # its next position (or its unchecked tokens) waits for the LLM
    unchecked: Unchecked = field(default_factory=Unchecked)
    prediction: Prediction | None = None
    finish: str | None = None  # "eos", "stop" or "length" once it has ended
    tally: SampleTally = field(default_factory=SampleTally)

    @classmethod
    def admit(
        cls, index: int, req: GenRequest, slot: int, device: torch.device, gamma: int = 0
    ) -> Row:
        """A new row for ``req`` in cache slot ``slot``, drafting ``gamma`` tokens at first
        (speculative); its generators are seeded from the request alone."""
        sample_gen = seeded_generator(req.seed, "sample", device)
        route_gen = seeded_generator(req.seed, "route", "cpu")
        row = cls(index, req, slot, list(req.prompt_ids), sample_gen, route_gen)
        row.unchecked.gamma = gamma
        return row

    def ending(self, eos_ids: set[int], tokenizer) -> str | None:
        """Why the row ends at its last committed token: ``eos``, ``length`` or ``stop`` (None: it
        goes on)."""
        if self.seq[-1] in eos_ids:
            return "eos"
        if self.generated >= self.req.max_new_tokens:
            return "length"
        if self.req.stop:
            # A stop string can span token boundaries: look at a tail long enough to hold any.
            span = max(len(s) for s in self.req.stop) + 2
            tail = tokenizer.decode(self.seq[max(self.n_prompt, len(self.seq) - span) :])
            if any(s in tail for s in self.req.stop):
                return "stop"
        return None

    def result(self, tokenizer, params: ParamSizes) -> GenResult:
        """The finished row's text (cut at its first stop string, EOS left out), tokens, record."""
        ids = self.seq[self.n_prompt :]
        body = ids[:-1] if self.finish == "eos" else ids
        text = tokenizer.decode(body, skip_special_tokens=True)
        for stop in self.req.stop:
            if stop in text:
                text = text[: text.index(stop)]
        record = self.tally.record(params, self.req.key)
        return GenResult(text, ids, self.finish or "length", record)

    @property
    def n_prompt(self) -> int:
        return len(self.req.prompt_ids)

    @property
    def generated(self) -> int:
        return len(self.seq) - self.n_prompt

    @property
    def left(self) -> int:
        """Tokens the row may still write: its budget less what it has written."""
        return self.req.max_new_tokens - self.generated

    def unseen(self, model: Model) -> list[int]:
        """Committed and unchecked tokens that ``model``'s cache does not hold yet.

        Sliced without building ``seq + unchecked``: rows run to thousands of tokens, and this is
        called for every row at every step.
        """
        cached, drafts = self.cached[model], self.unchecked.tokens
        if cached <= len(self.seq):
            return self.seq[cached:] + drafts
        return drafts[cached - len(self.seq) :]

    def asked(self) -> list[int]:
        """Where the LLM's logits are read among the tokens it is fed now: before each guess (to
        check it), else at the last token (to predict the next position).

        The logits at fed index ``i`` predict the token at position ``cached + i + 1`` of
        ``seq + unchecked``, so the prediction of position ``p`` is read at ``p - 1 - cached``.
        """
        first = len(self.seq) - 1 - self.cached[Model.LLM]
        return [first + g for g in self.unchecked.guesses] or [first + len(self.unchecked.tokens)]

    def fed(self, model: Model, tokens: int, modeled_s: float) -> None:
        """Count a forward of ``model`` that was fed ``tokens`` of this row's tokens."""
        self.cached[model] += tokens
        if model is Model.SLM:
            self.tally.slm_forward_tokens += tokens
            self.tally.slm_calls += 1
        else:
            self.tally.llm_forward_tokens += tokens
            self.tally.llm_calls += 1
        self.tally.modeled_latency_s += modeled_s

    def rewind_caches(self) -> None:
        """Lower both caches' lengths to the committed tokens less the last, after unchecked tokens
        were committed or dropped: stale slots get overwritten, and the last token is fed again so
        its logits (which a cache does not keep) are there for the next position."""
        for model in Model:
            self.cached[model] = min(self.cached[model], len(self.seq) - 1)


def charge(rows: list[Row], fed: list[int], seconds: float) -> None:
    """Split one step's wall time over its rows by the tokens each fed the model."""
    total = sum(fed)
    for row, n in zip(rows, fed):
        row.tally.latency_s += seconds * n / total


def empty_result(req: GenRequest, params: ParamSizes) -> GenResult:
    """The result of a request with no tokens to write."""
    return GenResult("", [], "length", SampleTally().record(params, req.key))


def seeded_generator(seed: int, salt: str, device: torch.device | str) -> torch.Generator:
    """A generator seeded from ``seed`` and a purpose (``salt``): one stream per sample and use."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
