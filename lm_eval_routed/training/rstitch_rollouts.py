"""R-Stitch+'s rollouts: the decoder run with a policy that samples its actions and records them.

Training needs, per rollout, what inference throws away: at each consulted position (the SLM's
normalized entropy above tau) the features the policy read, the action it sampled and that action's
log-probability under the sampling policy; and, for the reward, the trajectory's modeled latency
L-hat. ``SampledPolicy`` is the ``rstitch-plus`` router with its argmax replaced by a draw from the
row's own routing generator (so a rollout's actions depend on its seed, not on the batch it ran in),
keyed by request. ``rollouts`` runs a group of seeded requests per prompt through the mixed decoder
and turns each into a ``RolloutResult``: its text, its decisions, its trajectory and L-hat.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lm_eval_routed.core.accounting import Model
from lm_eval_routed.core.rows import GenRequest, GenResult
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.latency_model import LatencyModel, Span, Trajectory, latency_of
from lm_eval_routed.loading.runtime import RoutedRuntime, sample_seed
from lm_eval_routed.routers.base import StepView
from lm_eval_routed.routers.rstitch_plus import SWITCH, PolicyNet, RStitchPlus


@dataclass(frozen=True)
class Decision:
    """One consultation of the policy in a rollout."""

    context: int  # tokens before the position (prompt + generated)
    features: Tensor  # (H + 1,) what the policy read, float32 on the CPU
    switch: bool  # the action sampled
    logp: float  # its log-probability under the policy that sampled it


class SampledPolicy(RStitchPlus):
    """``rstitch-plus`` that samples its action at each consulted position and records it per
    request (``decisions``); the policy network is read, never trained, here."""

    def __init__(self, net: PolicyNet, threshold: float) -> None:
        super().__init__(net, threshold, {"sampled": True})
        self.decisions: dict[int, list[Decision]] = defaultdict(list)

    def act(self, features: Tensor, slm: StepView, asked: list[int]) -> Tensor:
        logp = torch.log_softmax(self.net.logits_of(features).float(), dim=-1).cpu()
        p_switch = logp[:, SWITCH].exp()
        draws = torch.stack([torch.rand((), generator=slm.gens[i]) for i in asked])
        switch = draws < p_switch
        context = slm.context.tolist()
        feats = features.float().cpu()
        for j, i in enumerate(asked):
            action = int(switch[j])
            taken = SWITCH if action else 1 - SWITCH
            self.decisions[slm.requests[i]].append(
                Decision(context[i], feats[j], bool(action), float(logp[j, taken]))
            )
        return switch


@dataclass(frozen=True)
class Prompt:
    """A training prompt: its token ids and the row the answer checker reads."""

    ids: list[int]
    row: dict


@dataclass(frozen=True)
class RolloutResult:
    """One sampled trajectory of one prompt."""

    prompt: int  # index into the prompts rolled out
    text: str
    correct: bool
    latency_s: float  # L-hat, modeled (latency_model.latency_of)
    llm_share: float
    decisions: tuple[Decision, ...]
    trajectory: Trajectory

    @property
    def switches(self) -> int:
        """Consultations that handed the position to the LLM."""
        return sum(d.switch for d in self.decisions)


def trajectory_of(prompt_tokens: int, producers: list[str], switched_at: set[int]) -> Trajectory:
    """The stitched trajectory of a decode: spans of one model's tokens, an LLM span opening at
    each position a switch handed over (``switched_at``: generated-token indices).

    Every LLM token is either the first of a switch or follows another LLM token; anything else
    means the producers and decisions come from different decodes.
    """
    spans: list[list] = []
    for position, who in enumerate(producers):
        model = Model(who)
        opens = position in switched_at
        if model is Model.LLM and not opens and (not spans or spans[-1][0] is not Model.LLM):
            raise ValueError(f"LLM token at {position} without a switch before it")
        if opens or not spans or spans[-1][0] is not model:
            spans.append([model, 0])
        spans[-1][1] += 1
    return Trajectory(prompt_tokens, tuple(Span(m, n) for m, n in spans))


def rollouts(
    runtime: RoutedRuntime,
    net: PolicyNet,
    threshold: float,
    prompts: list[Prompt],
    group: int,
    seed: int,
    checker: Callable[[str, dict], bool],
    latency: LatencyModel,
    max_new_tokens: int,
    stop: tuple[str, ...] = (),
    on_done: Callable[[], None] | None = None,
) -> list[RolloutResult]:
    """``group`` rollouts of each prompt, sampling ``net`` at every position above ``threshold``;
    rollout ``g`` of prompt ``i`` is seeded from (``seed``, i, g). Tokens are greedy: the router's
    actions are all that varies within a group."""
    policy = SampledPolicy(net, threshold)
    requests = [
        GenRequest(p.ids, max_new_tokens, stop=stop, seed=sample_seed(seed, i, g))
        for i, p in enumerate(prompts)
        for g in range(group)
    ]
    done = (lambda index, result: on_done()) if on_done is not None else None
    results = runtime.with_router(policy).decoder.generate(
        requests, runtime.cfg.batch_size, on_done=done
    )
    return [
        _result(
            index // group,
            prompts[index // group],
            result,
            policy.decisions[index],
            checker,
            latency,
        )
        for index, result in enumerate(results)
    ]


def _verdict(checker: Callable[[str, dict], bool], text: str, row: dict) -> bool:
    """The checker's answer on one rollout; a checker that raises stops the run in one line."""
    try:
        return bool(checker(text, row))
    except Exception as err:  # noqa: BLE001 (the user's code: any error is theirs to fix)
        name = getattr(checker, "__name__", repr(checker))
        raise ConfigError(
            f"the checker {name} raised {type(err).__name__} ({err}) on a rollout of the row "
            f"{json.dumps(row, default=str)[:120]}; it must return True or False for any text"
        ) from None


def _result(
    index: int,
    prompt: Prompt,
    result: GenResult,
    decisions: list[Decision],
    checker: Callable[[str, dict], bool],
    latency: LatencyModel,
) -> RolloutResult:
    n_prompt = len(prompt.ids)
    switched_at = {d.context - n_prompt for d in decisions if d.switch}
    producers = list(result.record.llm_positions)
    who = ["slm"] * result.record.tokens
    for position in producers:
        who[position] = "llm"
    traj = trajectory_of(n_prompt, who, switched_at)
    return RolloutResult(
        prompt=index,
        text=result.text,
        correct=_verdict(checker, result.text, prompt.row),
        latency_s=latency_of(traj, latency),
        llm_share=result.record.llm_share,
        # recorded under inference mode; a clone made here is a tensor autograd may save
        decisions=tuple(dataclasses.replace(d, features=d.features.clone()) for d in decisions),
        trajectory=traj,
    )
