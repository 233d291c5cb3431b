"""R-Stitch+'s training objective: the latency-aware reward and DAPO's loss over the router's decisions.

Reward (R-Stitch+, arXiv 2507.17307): R = r_acc - lambda * r_acc * L-hat, r_acc in {0, 1}, L-hat the
trajectory's modeled latency (``loading/latency_model.latency_of``, seconds): latency costs only a right
answer. The loss is DAPO's (arXiv 2503.14476) over every decision the router made in a batch of rollouts
grouped by prompt:
  - advantages (R_i - mean R) / (std R + 1e-6) within each prompt's group (std with Bessel's
    correction, as verl's GRPO advantage, on which DAPO's released code runs);
  - groups whose rewards are all equal carry no signal and are dropped (dynamic sampling);
  - per decision, min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) with ratio = pi / pi_old of
    the action taken, eps_low 0.2 and eps_high 0.28 (the higher clip lets unlikely actions grow);
  - averaged over all decisions of all kept rollouts (token-level), so a long rollout weighs by its
    decisions, not as one sample; no KL term.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

ADVANTAGE_EPS = 1e-6


@dataclass(frozen=True)
class Clip:
    """DAPO's asymmetric clip range for the ratio: [1 - low, 1 + high]."""

    low: float = 0.2
    high: float = 0.28


@dataclass(frozen=True)
class Rollout:
    """One trajectory of a prompt's group: its reward and the router's decisions in it.

    ``logp`` and ``old_logp`` are (n,) log-probabilities of the action taken at each of its n
    decisions, under the policy being trained (with gradient) and the one that sampled it.
    """

    group: int
    reward: float
    logp: Tensor
    old_logp: Tensor


@dataclass(frozen=True)
class DapoLoss:
    """The loss to minimise and what went into it."""

    loss: Tensor  # scalar; zero (no gradient) when no group is kept
    decisions: int  # decisions averaged over (kept rollouts only)
    kept_groups: int
    dropped_groups: int
    clipped: float  # share of those decisions whose ratio the clip held


def reward(correct: bool, latency_s: float, lam: float) -> float:
    """R = r_acc - lam * r_acc * L-hat: a wrong answer scores 0 however fast."""
    r_acc = 1.0 if correct else 0.0
    return r_acc - lam * r_acc * latency_s


def advantages(rollouts: list[Rollout]) -> tuple[list[float | None], int]:
    """Each rollout's group-normalised advantage (None where its group is dropped), and how many
    groups were dropped."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(rollouts):
        groups[r.group].append(i)
    out: list[float | None] = [None] * len(rollouts)
    dropped = 0
    for members in groups.values():
        rewards = [rollouts[i].reward for i in members]
        if max(rewards) == min(rewards):
            dropped += 1  # all equal (a group of one included): nothing to learn from
            continue
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
        for i, r in zip(members, rewards):
            out[i] = (r - mean) / (std + ADVANTAGE_EPS)
    return out, dropped


def dapo_loss(rollouts: list[Rollout], clip: Clip | None = None) -> DapoLoss:
    """DAPO's clipped surrogate, token-level over the kept rollouts' decisions (module docstring)."""
    clip = clip or Clip()
    adv, dropped = advantages(rollouts)
    kept = [(r, a) for r, a in zip(rollouts, adv) if a is not None and r.logp.numel()]
    n_groups = len({r.group for r in rollouts})
    if not kept:
        return DapoLoss(torch.zeros(()), 0, n_groups - dropped, dropped, 0.0)
    logp = torch.cat([r.logp for r, _ in kept])
    old = torch.cat([r.old_logp for r, _ in kept]).to(logp)
    a = torch.cat([torch.full((r.logp.numel(),), a) for r, a in kept]).to(logp)
    ratio = torch.exp(logp - old.detach())
    clipped_ratio = ratio.clamp(1.0 - clip.low, 1.0 + clip.high)
    objective = torch.minimum(ratio * a, clipped_ratio * a)
    held = (objective != ratio * a).float().mean()
    return DapoLoss(
        -objective.mean(), logp.numel(), n_groups - dropped, dropped, float(held.detach())
    )
