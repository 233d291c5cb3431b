"""Choosing a token from logits: greedy, or temperature / top-k / top-p sampling from a row's own
generator, and accepting speculative drafts so the result is distributed as the LLM samples."""

from __future__ import annotations

import torch
from torch import Tensor

from lm_eval_routed.core.rows import GenRequest, Row


def filtered_probs(
    logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> Tensor:
    """(..., V) probabilities after temperature, top-k and top-p filtering.

    The steps, their order and their boundary rules are transformers' ``TemperatureLogitsWarper``,
    ``TopKLogitsWarper`` and ``TopPLogitsWarper`` (as ``generate`` applies them), so a routed run
    samples from the distribution an ``hf`` run with the same settings samples from.
    ``top_k=0`` and ``top_p=1`` filter nothing.
    """
    scores = logits.float() / max(temperature, 1e-5)
    if 0 < top_k < scores.size(-1):
        # every token scoring at least the k-th best stays: ties at the boundary all stay
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -torch.inf)
    if top_p < 1.0:
        # Drop each token whose mass, with that of every token sorted below it, is at most
        # 1 - top_p; the top token always stays. Tied tokens are ordered as torch.sort orders them
        # (ascending, as transformers sorts), so a tie at the boundary breaks the same way.
        ascending, order = scores.sort(dim=-1)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    return scores.softmax(-1)


def draw(probs: Tensor, generator: torch.Generator) -> int:
    """One token id from a (V,) distribution."""
    return int(torch.multinomial(probs, 1, generator=generator))


def choose(logits: Tensor, rows: list[Row]) -> tuple[list[int], list[Tensor | None]]:
    """Each row's token from its (b, V) ``logits``: greedy, or sampled from the row's generator;
    with the distribution it was drawn from (None when greedy)."""
    greedy = logits.argmax(-1).tolist()
    tokens, probs = [], []
    for i, row in enumerate(rows):
        if not row.req.do_sample:
            tokens.append(greedy[i])
            probs.append(None)
            continue
        p = filtered_probs(logits[i], row.req.temperature, row.req.top_k, row.req.top_p)
        tokens.append(draw(p, row.sample_gen))
        probs.append(p)
    return tokens, probs


def accept_drafts(
    drafts: list[int],
    draft_probs: list[Tensor | None],
    scored: Tensor,
    req: GenRequest,
    generator: torch.Generator,
) -> tuple[int, int]:
    """How many drafts the LLM accepts, and its token after them; ``scored`` holds its (k + 1, V)
    logits at each draft slot and one more."""
    if not req.do_sample:
        target = scored.argmax(-1).tolist()
        n = 0
        while n < len(drafts) and drafts[n] == target[n]:
            n += 1
        return n, target[n]
    # Speculative sampling (Leviathan et al. 2023): accept d with prob min(1, p(d)/q(d)),
    # else resample from norm(max(0, p - q)); the result is distributed as the LLM samples.
    p = filtered_probs(scored, req.temperature, req.top_k, req.top_p)
    for n, (token, q) in enumerate(zip(drafts, draft_probs)):
        u = torch.rand((), generator=generator, device=p.device)
        if u * q[token] > p[n, token]:
            residual = (p[n] - q).clamp_min(0)
            return n, draw(residual / residual.sum(), generator)
    return len(drafts), draw(p[-1], generator)
