"""A reference for mixed routing that shares nothing with the decoder: replay each generated sequence.

For every generated position the reference calls each Hugging Face model on the whole prefix (prompt +
the tokens committed before it: one plain forward, no cache, none of the project's engines), then
checks that the token there is the argmax of the model the sample's record says wrote it, and that the
routing rule as the papers state it (R2R, R-Stitch, CITER), recomputed here from that plain forward
(entropy, R2R's and CITER's networks written out from their weights), sends the position there.

A decision within ``TIE`` of its threshold, or a token within ``TIE`` of another's logit, is counted as
a tie and accepted either way: the decoder's engines (prepacked kernels, packed rows) round differently
from a plain forward, by far less than that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

TIE = 1e-4


class Writer(Enum):
    """Which model wrote a position (the record's ``llm_positions`` say)."""

    SLM = "slm"
    LLM = "llm"


@dataclass(frozen=True)
class Plain:
    """One model's plain forward at a prefix: the next position's logits and last hidden state."""

    logits: Tensor  # (V,) float64
    hidden: Tensor  # (H,) after the final norm
    context: int = 0  # tokens in the prefix: the position's context length

    @property
    def argmax(self) -> int:
        return int(self.logits.argmax())


class PlainModel:
    """A Hugging Face causal LM called on whole prefixes; each prefix's forward is computed once."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._seen: dict[tuple[int, ...], Plain] = {}

    @torch.no_grad()
    def at(self, prefix: list[int]) -> Plain:
        """The model's forward over ``prefix`` (no past key values), read at its last token."""
        key = tuple(prefix)
        if key not in self._seen:
            out = self.model(input_ids=torch.tensor([prefix]), output_hidden_states=True)
            self._seen[key] = Plain(
                out.logits[0, -1].double(), out.hidden_states[-1][0, -1], len(prefix)
            )
        return self._seen[key]


@dataclass(frozen=True)
class Decision:
    """A routing rule's answer at one position, and how far its score lies from the threshold."""

    to_llm: bool
    margin: float

    @property
    def options(self) -> set[bool]:
        """The answers a decoder may give: both when the score ties with the threshold."""
        return {True, False} if self.margin < TIE else {self.to_llm}


def entropy_nats(logits: Tensor) -> float:
    """-sum p log p of softmax(logits), in float64."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(-(logp.exp() * logp).sum())


def normalized_entropy(logits: Tensor) -> float:
    """R-Stitch's entropy: nats over log V, in [0, 1]."""
    return entropy_nats(logits) / math.log(logits.shape[-1])


# -- the papers' routing rules, each on the plain SLM forward at a position ---------------------

Rule = Callable[[Plain], Decision]


def entropy_token_rule(tau: float) -> Rule:
    """R2R's entropy baseline: the LLM writes the position when the SLM's entropy in nats is >= tau."""
    return lambda slm: Decision(
        entropy_nats(slm.logits) >= tau, abs(entropy_nats(slm.logits) - tau)
    )


def stitch_rule(tau: float) -> Rule:
    """R-Stitch: a token whose normalized entropy exceeds tau goes to (or stays with) the LLM; the
    same rule on the LLM's own distribution decides whether it keeps control."""
    return lambda plain: Decision(
        normalized_entropy(plain.logits) > tau, abs(normalized_entropy(plain.logits) - tau)
    )


def rstitch_plus_rule(w: dict[str, Tensor], tau: float, context_scale: float) -> Rule:
    """R-Stitch+: a position whose normalized SLM entropy exceeds tau goes to the LLM when the
    policy's argmax says switch (action 1); its network from the weights: [h, n / scale] -> Linear,
    ReLU, Linear -> (stay, switch). Below tau the SLM keeps the position."""

    def decide(slm: Plain) -> Decision:
        h = normalized_entropy(slm.logits)
        x = torch.cat([slm.hidden.double(), torch.tensor([slm.context / context_scale]).double()])
        stay, switch = _linear(torch.relu(_linear(x, w, "inp")), w, "out").tolist()
        if h <= tau - TIE:
            return Decision(False, tau - h)
        if stay - switch >= TIE:
            return Decision(False, stay - switch)
        return Decision(h > tau and switch > stay, min(abs(h - tau), abs(switch - stay)))

    return decide


def _linear(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    return F.linear(x, w[f"{name}.weight"].double(), w[f"{name}.bias"].double())


def _layer_norm(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    weight, bias = w[f"{name}.weight"].double(), w[f"{name}.bias"].double()
    return F.layer_norm(x, weight.shape, weight, bias, eps=1e-5)


def r2r_score(w: dict[str, Tensor], hidden: Tensor, token_emb: Tensor, logits: Tensor) -> float:
    """R2R's network (arXiv 2505.21600) from its weights: top-k raw logits sorted, projected to H;
    [hidden, token embedding, projection] -> width; pre-LayerNorm residual GELU MLP blocks; LayerNorm;
    Linear -> 1. Dropout is off at inference."""
    k = w["logit_proj.weight"].shape[1]
    top = torch.sort(logits.double(), descending=True).values[:k]
    x = torch.cat([hidden.double(), token_emb.double(), _linear(top, w, "logit_proj")])
    x = _linear(x, w, "inp")
    blocks = sorted({int(name.split(".")[1]) for name in w if name.startswith("blocks.")})
    for b in blocks:
        inner = F.gelu(_linear(_layer_norm(x, w, f"blocks.{b}.norm"), w, f"blocks.{b}.up"))
        x = x + _linear(inner, w, f"blocks.{b}.down")
    return float(_linear(_layer_norm(x, w, "norm"), w, "out")[0])


def r2r_rule(w: dict[str, Tensor], embedding: Tensor, threshold: float) -> Rule:
    """R2R: the LLM writes the position when sigmoid(score) >= threshold; inputs from the SLM: its
    last hidden state, its own token embedded with its input embedding, its logits."""

    def decide(slm: Plain) -> Decision:
        top2 = torch.topk(slm.logits, 2).values
        p = torch.sigmoid(torch.tensor(r2r_score(w, slm.hidden, embedding[slm.argmax], slm.logits)))
        # a tie for the SLM's own token makes its embedding, and with it the score, uncertain
        margin = abs(float(p) - threshold) if top2[0] - top2[1] >= TIE else 0.0
        return Decision(float(p) >= threshold, margin)

    return decide


def citer_score(w: dict[str, Tensor], hidden: Tensor) -> float:
    """CITER's MLP (arXiv 2502.01976): Linear(h, 2h), BatchNorm (running statistics), ReLU, Linear(2h, h),
    Linear(h, 1); dropout off at inference."""
    x = _linear(hidden.double(), w, "mlp.0")
    mean, var = w["mlp.1.running_mean"].double(), w["mlp.1.running_var"].double()
    x = (x - mean) / torch.sqrt(var + 1e-5) * w["mlp.1.weight"].double() + w["mlp.1.bias"].double()
    x = _linear(torch.relu(x), w, "mlp.4")
    return float(_linear(x, w, "linear")[0])


def citer_rule(w: dict[str, Tensor], threshold: float) -> Rule:
    """CITER: sigmoid(score) is the confidence in the SLM's token; the LLM writes below threshold."""

    def decide(slm: Plain) -> Decision:
        p = float(torch.sigmoid(torch.tensor(citer_score(w, slm.hidden))))
        return Decision(p < threshold, abs(p - threshold))

    return decide


# -- the replay ---------------------------------------------------------------------------------------


@dataclass
class Replay:
    """What replaying samples found: every disagreement, and counts that say the check had teeth."""

    mismatches: list[str] = field(default_factory=list)
    positions: int = 0
    llm_positions: int = 0
    ties: int = 0  # tokens or decisions within TIE: accepted either way
    # positions where the two models' argmaxes differ, so the token tells which model wrote it
    differ_llm: int = 0
    differ_slm: int = 0
    takeovers: int = 0  # STITCH: the LLM takes control from the SLM
    handbacks: int = 0  # STITCH: the LLM hands control back (its entropy <= tau)
    kept: int = 0  # STITCH: the LLM keeps control past a token of its own


@dataclass(frozen=True)
class Routing:
    """How positions are decided: a per-token rule, R-Stitch's, or none (tokens checked only)."""

    token: Rule | None = None
    stitch: Rule | None = None
    handback: Rule | None = None  # STITCH: the LLM's keep rule, where it is not ``stitch``


def replay(
    slm: PlainModel,
    llm: PlainModel,
    prompt: list[int],
    tokens: list[int],
    llm_positions: list[int],
    routing: Routing,
    into: Replay,
    label: str = "",
) -> Replay:
    """Replay one sample's ``tokens`` after ``prompt`` against plain forwards; add to ``into``."""
    routed = set(llm_positions)
    writers = [Writer.LLM if k in routed else Writer.SLM for k in range(len(tokens))]
    if routed - set(range(len(tokens))):
        into.mismatches.append(f"{label}: llm_positions {sorted(routed)} past {len(tokens)} tokens")
    keep_prev: Decision | None = None  # STITCH: the LLM's keep decision after the previous token
    for k, (token, writer) in enumerate(zip(tokens, writers)):
        prefix = prompt + tokens[:k]
        s, g = slm.at(prefix), llm.at(prefix)
        into.positions += 1
        into.llm_positions += writer is Writer.LLM
        ref = g if writer is Writer.LLM else s
        gap = float(ref.logits.max() - ref.logits[token])
        top2 = torch.topk(ref.logits, 2).values
        into.ties += float(top2[0] - top2[1]) < TIE
        if gap >= TIE:
            into.mismatches.append(
                f"{label} position {k}: token {token} is not the {writer.value}'s argmax "
                f"{ref.argmax} (short by {gap:.3g})"
            )
        if s.argmax != g.argmax:
            into.differ_llm += writer is Writer.LLM
            into.differ_slm += writer is Writer.SLM
        options = _options(routing, s, keep_prev)
        if options is not None:
            into.ties += len(options) > 1
            if (writer is Writer.LLM) not in options:
                want = "llm" if writer is Writer.SLM else "slm"
                into.mismatches.append(
                    f"{label} position {k}: the rule gives it to the {want}, the record to the "
                    f"{writer.value}"
                )
        if routing.stitch is not None:
            keep_rule = routing.handback or routing.stitch
            keep_prev = _stitch_counts(keep_rule, g, writers, k, keep_prev, into)
    return into


def _options(routing: Routing, slm: Plain, keep_prev: Decision | None) -> set[bool] | None:
    """The answers to "does the LLM write this position?" that the rule allows (None: unchecked)."""
    if routing.token is not None:
        return routing.token(slm).options
    if routing.stitch is None:
        return None
    # the LLM writes it when it kept control after its previous token, or the SLM's token is
    # uncertain (after a hand-back the SLM decodes the position and the rule looks at it again)
    kept = keep_prev.options if keep_prev is not None else {False}
    route = routing.stitch(slm).options
    return {a or b for a in kept for b in route}


def _stitch_counts(
    rule: Rule, llm: Plain, writers: list[Writer], k: int, keep_prev: Decision | None, into: Replay
) -> Decision | None:
    """Count R-Stitch's switches at position ``k``; the LLM's keep decision after it, if it wrote it."""
    if writers[k] is not Writer.LLM:
        return None
    if k == 0 or writers[k - 1] is Writer.SLM:
        into.takeovers += 1
    keep = rule(llm)
    if k + 1 < len(writers):
        into.kept += keep.to_llm
        into.handbacks += not keep.to_llm
    return keep
