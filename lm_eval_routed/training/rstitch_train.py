"""`lm-eval-routed train rstitch-plus`: R-Stitch+'s router trained by reinforcement learning (DAPO).

A step: ``prompts_per_step`` prompts, ``group`` rollouts each with the policy sampled at every
position the SLM holds above tau (``rstitch_rollouts.py``); each rollout's reward
R = r_acc - lambda r_acc L-hat from the answer checker and the latency model; then ``updates``
gradient steps of DAPO's loss over every decision of the batch (``rstitch_plus.py``): the first is
on-policy, later ones are held by the clip. The work folder holds ``settings.json`` (what the run
depends on: a resumed run under other settings stops in one line), ``latency.json`` (the latency
model, fitted on the run's engines as the first step unless given), ``log.jsonl`` (one line per step:
reward, accuracy, mean L-hat, switch rate, ...) and ``state.safetensors`` (the policy, the optimizer
and the steps done, written whole after each step), so a killed run resumes at its last finished step
and ends where an unbroken one would. When every step is done the checkpoint folder is written:
``model.safetensors`` + ``config.json`` as the other routers', with the latency model beside them.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from lm_eval_routed.core.accounting import Model
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import save_atomic
from lm_eval_routed.loading import latency_model
from lm_eval_routed.loading.latency_model import LatencyModel
from lm_eval_routed.loading.runtime import RoutedRuntime, sample_seed
from lm_eval_routed.routers import checkpoint
from lm_eval_routed.routers.rstitch_plus import KIND, SWITCH, PolicyNet
from lm_eval_routed.training.common import JsonlLog, encode_prompt, pick_field
from lm_eval_routed.training.rstitch_plus import Clip, Rollout, dapo_loss, reward
from lm_eval_routed.training.rstitch_rollouts import Prompt, RolloutResult, rollouts

log = logging.getLogger(__name__)

STATE = "state.safetensors"


@dataclass(frozen=True)
class RStitchPlusOptions:
    """What a training run does. The paper's: lambda 5e-6 (its L-hat unit unstated), 32 prompts,
    group 8, DAPO's clip; the rest is ours (docs/training.md)."""

    threshold: float = 0.1  # tau, normalized entropy: positions above it consult the policy
    lam: float = 0.2  # lambda, per second of L-hat
    group: int = 8
    prompts_per_step: int = 32
    steps: int = 20
    updates: int = 2  # gradient steps per batch of rollouts
    lr: float = 1e-3
    width: int = 256
    context_scale: float = 4096.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    # the policy starts switching at every consulted position with this probability, whatever it
    # reads: near `entropy` at tau (which always switches), so the first rollouts already reach the
    # answers the LLM's help brings, and training learns where switching does not pay
    init_switch: float = 0.9

    def check(self) -> None:
        """One line for the first option out of range."""
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ConfigError(
                f"--threshold={self.threshold} must be in [0, 1] (normalized entropy)"
            )
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"--lam={self.lam} must be a number >= 0 (per second of L-hat)")
        if self.group < 2:
            raise ConfigError(f"--group={self.group} must be at least 2 (advantages are relative)")
        for key in ("prompts_per_step", "steps", "updates", "width", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')}={getattr(self, key)} must be >= 1")
        if not (math.isfinite(self.init_switch) and 0.0 < self.init_switch < 1.0):
            raise ConfigError(f"--init-switch={self.init_switch} must be in (0, 1)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr={self.lr} must be a positive number")

    def settings(self) -> dict[str, Any]:
        """What the work folder's steps depend on (``steps`` is not: a run may be extended)."""
        out = asdict(self)
        out.pop("steps")
        out["stop"] = list(self.stop)
        return out


@dataclass
class _State:
    """The trained policy, its optimizer and how many steps are done."""

    net: PolicyNet
    optimizer: torch.optim.Optimizer
    step: int = 0


def fit_latency(runtime: RoutedRuntime, repeats: int = 3) -> LatencyModel:
    """R-Stitch+'s latency model, timed on the engines the run decodes with (default grid)."""
    fits, timings = {}, {}
    engines = {Model.SLM: runtime.decoder.slm, Model.LLM: runtime.decoder.llm}
    with tqdm(
        total=2 * len(latency_model.DEFAULT_N_INF) * len(latency_model.DEFAULT_N_KV),
        desc="timing forwards (latency model)",
    ) as bar:
        for model, engine in engines.items():
            measured = latency_model.time_grid(engine, repeats=repeats, progress=bar.update)
            fits[model] = latency_model.fit_model(measured)
            timings[model.value] = [asdict(t) for t in measured]
    where = {
        "slm": runtime.cfg.slm,
        "llm": runtime.cfg.llm,
        "device": str(runtime.device),
        "dtype": runtime.cfg.dtype,
        "engine": {"slm": runtime.decoder.slm.kind, "llm": runtime.decoder.llm.kind},
        "repeats": repeats,
        "timings": timings,
    }
    return LatencyModel(fits[Model.SLM], fits[Model.LLM], where)


def run_latency(runtime: RoutedRuntime, workdir: Path, given: LatencyModel | None) -> LatencyModel:
    """The latency model a run's rewards are priced by: ``given``, else the one its work folder
    keeps, else fitted now on the run's engines (the run's first step) and kept there."""
    if given is not None:
        return given
    kept = workdir / "latency.json"
    if kept.is_file():
        return latency_model.load(kept)
    fitted = fit_latency(runtime)
    latency_model.save(kept, fitted)
    return fitted


def _new_state(hidden: int, opts: RStitchPlusOptions) -> _State:
    torch.manual_seed(opts.seed)
    net = PolicyNet(hidden, opts.width, opts.context_scale)
    with torch.no_grad():  # the same action probabilities everywhere at first (init_switch)
        net.out.weight.zero_()
        net.out.bias.zero_()
        net.out.bias[SWITCH] = math.log(opts.init_switch / (1.0 - opts.init_switch))
    return _State(net, torch.optim.Adam(net.parameters(), lr=opts.lr))


def _save_state(path: Path, state: _State) -> None:
    """Policy, Adam's moments and the step count in one file, replaced whole."""
    tensors = {f"net.{k}": v.detach().clone() for k, v in state.net.state_dict().items()}
    for index, moments in state.optimizer.state_dict()["state"].items():
        for key, value in moments.items():
            tensors[f"adam.{index}.{key}"] = torch.as_tensor(value).detach().clone()
    meta = {"step": str(state.step)}
    save_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _load_state(path: Path, hidden: int, opts: RStitchPlusOptions) -> _State:
    state = _new_state(hidden, opts)
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            step = int((f.metadata() or {})["step"])
    except Exception as err:  # noqa: BLE001 (safetensors raises its own types)
        raise ConfigError(
            f"{path} is not a training state this command wrote ({err}); delete it to start over"
        ) from None
    state.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    saved = state.optimizer.state_dict()
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    state.optimizer.load_state_dict({"state": moments, "param_groups": saved["param_groups"]})
    state.step = step
    return state


def _batch(n_prompts: int, step: int, opts: RStitchPlusOptions) -> list[int]:
    """The prompts of ``step``: the data walked in a seeded order, reshuffled at each pass."""
    out: list[int] = []
    start = step * opts.prompts_per_step
    for k in range(start, start + opts.prompts_per_step):
        epoch, at = divmod(k, n_prompts)
        order = list(range(n_prompts))
        random.Random(f"{opts.seed}:{epoch}").shuffle(order)
        out.append(order[at])
    return out


@dataclass(frozen=True)
class _Taken:
    """A batch's decisions, stacked once: features (n, H + 1), actions taken (n,), and how many
    of them each rollout holds."""

    features: torch.Tensor
    actions: torch.Tensor
    counts: list[int]

    @classmethod
    def of(cls, results: list[RolloutResult]) -> _Taken:
        decisions = [d for r in results for d in r.decisions]
        features = torch.stack([d.features for d in decisions]) if decisions else torch.zeros(0)
        actions = torch.tensor([SWITCH if d.switch else 1 - SWITCH for d in decisions])
        return cls(features, actions, [len(r.decisions) for r in results])

    def logp(self, net: PolicyNet) -> list[torch.Tensor]:
        """Each rollout's (n,) log-probabilities of its taken actions under ``net`` (with gradient)."""
        if not self.actions.numel():
            return [torch.zeros(0) for _ in self.counts]
        logits = net.logits_of(self.features.to(next(net.parameters()).dtype))
        logp = torch.log_softmax(logits, -1).gather(-1, self.actions[:, None])[:, 0]
        return list(logp.split(self.counts))


def train_step(
    state: _State, results: list[RolloutResult], opts: RStitchPlusOptions
) -> dict[str, float]:
    """DAPO's update over one batch of rollouts; the step's loss figures."""
    rewards = [reward(r.correct, r.latency_s, opts.lam) for r in results]
    old = [torch.tensor([d.logp for d in r.decisions]) for r in results]
    taken = _Taken.of(results)
    figures: dict[str, float] = {}
    for update in range(opts.updates):
        logps = taken.logp(state.net)
        batch = [Rollout(r.prompt, R, lp, o) for r, R, lp, o in zip(results, rewards, logps, old)]
        out = dapo_loss(batch, Clip())
        if update == 0:
            figures = {
                "loss": out.loss.item(),
                "kept_groups": out.kept_groups,
                "dropped_groups": out.dropped_groups,
                "decisions_used": out.decisions,
            }
        figures["clipped"] = out.clipped
        if not out.decisions:
            break  # every group's rewards were equal: nothing to learn from this batch
        state.optimizer.zero_grad()
        out.loss.backward()
        state.optimizer.step()
    return figures


def step_log(step: int, results: list[RolloutResult], opts: RStitchPlusOptions) -> dict[str, Any]:
    """The per-step figures of a batch of rollouts (before the loss's)."""
    n = len(results)
    decisions = sum(len(r.decisions) for r in results)
    return {
        "step": step,
        "reward": sum(reward(r.correct, r.latency_s, opts.lam) for r in results) / n,
        "accuracy": sum(r.correct for r in results) / n,
        "latency_s": sum(r.latency_s for r in results) / n,
        "switch_rate": sum(r.switches for r in results) / decisions if decisions else 0.0,
        "decisions_per_rollout": decisions / n,
        "llm_share": sum(r.llm_share for r in results) / n,
    }


def train_rstitch_plus(
    runtime: RoutedRuntime,
    prompts: list[Prompt],
    checker: Callable[[str, dict], bool],
    opts: RStitchPlusOptions,
    workdir: Path,
    out: Path | None,
    latency: LatencyModel,
    slm_ref: str,
    data_fingerprint: str = "",
) -> dict[str, Any]:
    """Run (or resume) every step in ``workdir``; write the checkpoint to ``out`` when all are done.
    Returns the last step's log line with the checkpoint's path."""
    opts.check()
    if not prompts:
        raise ConfigError("no training prompts: the data holds no rows")
    hidden = runtime.slm.config.hidden_size
    state_path = workdir / STATE
    state = (
        _load_state(state_path, hidden, opts) if state_path.is_file() else _new_state(hidden, opts)
    )
    if state.step > opts.steps:
        raise ConfigError(
            f"{workdir} holds {state.step} finished steps, more than --steps={opts.steps}; give "
            f"--steps {state.step} or more, or another --workdir"
        )
    book = JsonlLog(workdir / "log.jsonl", ("step",))
    bar = tqdm(total=opts.steps, initial=min(state.step, opts.steps), desc="rstitch-plus steps")
    while state.step < opts.steps:
        start = time.perf_counter()
        picked = _batch(len(prompts), state.step, opts)
        results = rollouts(
            runtime,
            state.net,
            opts.threshold,
            [prompts[i] for i in picked],
            opts.group,
            seed=step_seed(opts.seed, state.step),
            checker=checker,
            latency=latency,
            max_new_tokens=opts.max_new_tokens,
            stop=opts.stop,
        )
        line = step_log(state.step, results, opts)
        line |= train_step(state, results, opts)
        line["seconds"] = round(time.perf_counter() - start, 2)
        book.extend([line])  # before the state: a crash between the two redoes this step
        state.step += 1
        _save_state(state_path, state)
        log.info(
            "step %d: reward %.3f, accuracy %.3f, L-hat %.3f s, switch rate %.3f, LLM share %.3f",
            line["step"],
            line["reward"],
            line["accuracy"],
            line["latency_s"],
            line["switch_rate"],
            line["llm_share"],
        )
        bar.update(1)
        bar.set_postfix(reward=f"{line['reward']:.3f}", acc=f"{line['accuracy']:.2f}")
    bar.close()
    last = book.records.get((opts.steps - 1,), {})
    if out is not None:
        write_checkpoint(
            out, state.net, runtime, opts, latency, last, slm_ref, data_fingerprint, workdir
        )
    return {**last, "checkpoint": str(out) if out is not None else None}


def step_seed(seed: int, step: int) -> int:
    """The rollout seed of a step: its own stream, the same on a resumed run."""
    return sample_seed(seed, "rstitch-plus-step", step)


def write_checkpoint(
    out: Path,
    net: PolicyNet,
    runtime: RoutedRuntime,
    opts: RStitchPlusOptions,
    latency: LatencyModel,
    last: dict[str, Any],
    slm_ref: str,
    data_fingerprint: str,
    workdir: Path,
) -> None:
    """``out``: the policy as an ``rstitch-plus`` checkpoint, its latency model beside it."""
    out.mkdir(parents=True, exist_ok=True)
    latency_model.save(out / "latency.json", latency)
    config = {
        "kind": KIND,
        "slm": slm_ref,
        "hidden_size": runtime.slm.config.hidden_size,
        "vocab_size": runtime.slm.get_input_embeddings().weight.shape[0],
        "width": opts.width,
        "context_scale": opts.context_scale,
        "threshold": opts.threshold,
        "threshold_rule": "training (the tau the policy was trained under)",
        "training": {
            **opts.settings(),
            "steps": opts.steps,
            "algorithm": "DAPO",
            "clip": asdict(Clip()),
            "latency_units": "seconds",
        },
        "data_fingerprint": data_fingerprint,
        "metrics": {k: v for k, v in last.items() if k != "step"},
    }
    checkpoint.save(out, net, config)
    shutil.copyfile(workdir / "log.jsonl", out / "training_log.jsonl")
    log.info("wrote %s", out)


def load_prompts(rows: list[dict], field: str, tokenizer, chat: bool, source: str) -> list[Prompt]:
    """Each row's prompt encoded as the run encodes it (raw text, or the chat template)."""
    texts = pick_field(rows, field, source)
    return [Prompt(encode_prompt(tokenizer, t, chat), r) for t, r in zip(texts, rows)]
