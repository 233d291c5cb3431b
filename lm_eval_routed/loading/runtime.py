"""RoutedRuntime: a config turned into loaded models, a router and a MixedDecoder, shared by every adapter.

Adapters (lm-eval, EvalPlus, the demo job) only translate their requests into ``GenRequest`` and read
back ``GenResult``; prompt encoding, truncation and run info live here so they behave the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.core.accounting import CostModel, ParamSizes
from lm_eval_routed.core.compiled import compile_engine
from lm_eval_routed.core.decoder import MixedDecoder
from lm_eval_routed.core.engine import HFEngine
from lm_eval_routed.core.native import checked_engine, unsupported
from lm_eval_routed.core.rows import GenRequest, GenResult
from lm_eval_routed.core.schedule import Schedule, decode_options
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading import latency_model
from lm_eval_routed.loading.costs import measure_forward_cost
from lm_eval_routed.loading.models import (
    ParamCount,
    check_same_vocab,
    check_vocab_fits,
    config_vocab_size,
    count_params,
    eos_ids,
    load_model,
    preflight,
    resolve_device,
    resolve_dtype,
    tokenizer_size,
)
from lm_eval_routed.loading.offsets import with_offsets
from lm_eval_routed.loading.placement import describe
from lm_eval_routed.loading.placement_keys import PlacementRequest
from lm_eval_routed.routers.base import Router, check_router, make_router

log = logging.getLogger(__name__)


@dataclass
class RoutedRuntime:
    """Everything a routed run holds: config, both models, tokenizer, router, decoder, cost model."""

    cfg: RoutedConfig
    slm: torch.nn.Module
    llm: torch.nn.Module
    tokenizer: Any
    router: Router
    decoder: MixedDecoder
    device: torch.device
    dtype: torch.dtype  # the LLM's
    slm_dtype: torch.dtype
    params_slm: ParamCount
    params_llm: ParamCount

    @property
    def prepacked(self) -> bool:
        """Whether both engines run their linear layers on prepacked oneDNN weights (CPU)."""
        return self.decoder.slm.prepacked and self.decoder.llm.prepacked

    @property
    def max_length(self) -> int:
        """Prompt + generation budget: the config's, else the LLM's context size."""
        if self.cfg.max_length:
            return self.cfg.max_length
        return int(getattr(self.llm.config, "max_position_embeddings", 4096))

    @property
    def start_token_id(self) -> int:
        """What an empty prompt or context starts from: BOS, else EOS (lm-eval's ``hf`` does the same)."""
        start = self.tokenizer.bos_token_id
        start = self.tokenizer.eos_token_id if start is None else start
        if start is None:
            raise ConfigError("an empty prompt needs a BOS or EOS token; this tokenizer has none")
        return start

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        """Token ids of ``prompt``, truncated from the left to leave room for the generation."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:  # an empty prompt: start from the token a document starts with, as lm-eval does
            ids = [self.start_token_id]
        room = self.max_length - max_new_tokens
        if room < 1:
            raise ConfigError(
                f"max_gen_toks={max_new_tokens} leaves no room for a prompt in max_length="
                f"{self.max_length}; raise max_length or lower max_gen_toks"
            )
        if len(ids) > room:
            log.warning("prompt of %d tokens truncated from the left to %d", len(ids), room)
            ids = ids[-room:]
        return ids

    def with_router(self, router: Router) -> RoutedRuntime:
        """This runtime with ``router`` in place of its own, over the same engines, cost model and
        decoding options (a router of the same kind: the options follow from the kind); this one is
        left as it was. Training routes with a policy it samples and updates between runs."""
        if router.kind is not self.router.kind:
            raise ConfigError(
                f"with_router takes a {self.router.kind.value} router like {self.router.name!r}, "
                f"not {router.name!r} ({router.kind.value})"
            )
        old = self.decoder
        decoder = MixedDecoder(
            old.slm,
            old.llm,
            router,
            self.tokenizer,
            old.costs,
            dataclasses.replace(old.params, router=router.num_params),
            old.eos_ids,
            old.options,
        )
        return dataclasses.replace(self, router=router, decoder=decoder)

    def generate(self, requests: list[GenRequest], on_done=None) -> list[GenResult]:
        """Run the decoder over ``requests`` at the configured batch size."""
        if not self.cfg.record_tokens:
            return self.decoder.generate(requests, self.cfg.batch_size, on_done=on_done)
        done: dict[int, GenResult] = {}

        def finished(index: int, result: GenResult) -> None:
            done[index] = with_offsets(result, self.tokenizer)  # once per sample, off the hot path
            if on_done is not None:
                on_done(index, done[index])

        results = self.decoder.generate(requests, self.cfg.batch_size, on_done=finished)
        return [done[i] for i in range(len(results))]

    @torch.inference_mode()
    def score(
        self, windows: list[list[int]], n_conts: list[int], quiet: bool = True
    ) -> list[tuple[float, bool]]:
        """(sum of log p, all greedy) of the last ``n_conts[i]`` tokens of each token window, under
        the LLM alone. Windows go longest first, ``batch_size`` at a time, packed into one forward
        each (no padding), and only the continuation's positions get logits. Scores come from
        torch's default kernels even where decoding runs on prepacked ones (``_scoring``)."""
        with self._scoring() as engine:
            return self._score(engine, windows, n_conts, quiet)

    @contextmanager
    def _scoring(self) -> Iterator[HFEngine]:
        """The engine scoring runs on. Prepacked oneDNN kernels round differently from torch's
        default ones, so where decoding runs prepacked, scores come from Hugging Face's forward over
        the LLM as loaded, as plain ``transformers`` and lm-eval's ``hf`` compute them."""
        if not self.decoder.llm.prepacked:
            yield self.decoder.llm
            return
        yield HFEngine(
            self.llm, self.decoder.llm.vocab_size
        )  # its own module tree, no copy of weights

    def _score(
        self, engine: HFEngine, windows: list[list[int]], n_conts: list[int], quiet: bool
    ) -> list[tuple[float, bool]]:
        step = self.cfg.batch_size
        todo = sorted(
            (i for i in range(len(windows)) if n_conts[i]), key=lambda i: -len(windows[i])
        )
        scores: list[tuple[float, bool]] = [(0.0, True)] * len(windows)  # empty continuations
        cache = engine.new_cache(step, len(windows[todo[0]])) if todo else None  # the longest
        for start in tqdm(range(0, len(todo), step), desc="routed loglikelihood", disable=quiet):
            picked = todo[start : start + step]
            inputs = [windows[i][:-1] for i in picked]  # position j predicts token j + 1
            at = [list(range(len(x) - n_conts[i], len(x))) for x, i in zip(inputs, picked)]
            rows = list(range(len(picked)))  # from empty: each batch overwrites the cache's rows
            out = engine.forward(cache, rows, [0] * len(rows), inputs, at=at, whole_head=True)
            for row, i in zip(rows, picked):
                span = F.log_softmax(out.logits[row, : n_conts[i]], dim=-1).cpu()
                target = torch.tensor(windows[i][-n_conts[i] :])
                total = span.gather(-1, target[:, None]).sum().item()
                scores[i] = (total, bool((span.argmax(-1) == target).all()))
        return scores

    def info(self) -> dict[str, Any]:
        """Run-level info recorded next to results (model ids, router, costs, versions)."""
        costs = self.decoder.costs
        return {
            "routed": {
                "slm": self.cfg.slm,
                "llm": self.cfg.llm,
                **self.router.info(),
                "dtype": str(self.dtype).removeprefix("torch."),
                "slm_dtype": str(self.slm_dtype).removeprefix("torch."),
                "device": str(self.device),
                "llm_device_map": self.cfg.llm_device_map,
                # where each model's modules were stored and ran (placement.py)
                "placement": {"slm": describe(self.slm), "llm": describe(self.llm)},
                "batch_size": self.cfg.batch_size,
                "llm_min_batch": self.decoder.options.llm_min_batch,
                "llm_runs_by": self.decoder.schedule.rule,  # schedule.py
                "guess_ahead": self.decoder.options.guess_ahead,
                "llm_lookahead": self.decoder.options.riding,
                "prepacked": self.prepacked,
                "engine": {"slm": self.decoder.slm.kind, "llm": self.decoder.llm.kind},
                # decode steps each engine ran compiled (compiled.py); None: not compiled
                "compiled_steps": {
                    name: e.compiled and e.compiled.steps
                    for name, e in (("slm", self.decoder.slm), ("llm", self.decoder.llm))
                },
                "schedule": self.cfg.schedule,
                "seed": self.cfg.seed,
                "params_slm": self.params_slm.total,
                "params_llm": self.params_llm.total,
                "params_slm_non_embedding": self.params_slm.non_embedding,
                "params_llm_non_embedding": self.params_llm.non_embedding,
                "params_router": self.router.num_params,
                "params_slm_nominal": self.cfg.params_slm_nominal,
                "params_llm_nominal": self.cfg.params_llm_nominal,
                "cost_model": {
                    "slm": list(costs.slm),
                    "llm": list(costs.llm),
                    "router": costs.router,
                    "source": costs.source,
                    "latency_model": self.cfg.latency_model,
                },
                "versions": _versions(),
            }
        }


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("lm-eval-routed", "torch", "transformers", "lm_eval", "evalplus"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def check_gen_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse generation settings (``--gen_kwargs``, a task's generation_kwargs) that would
    silently generate nothing or sample from no distribution."""
    where = "(from --gen_kwargs or the task's generation_kwargs)"
    budget = kwargs.get("max_gen_toks")
    if budget is not None and not (_finite(budget) and float(budget).is_integer()):
        raise ConfigError(f"max_gen_toks={budget!r} {where} must be a whole number of tokens")
    if budget is not None and budget < 1:  # lm-eval's CLI hands "-1" over as -1.0
        raise ConfigError(f"max_gen_toks={int(budget)} {where} must be at least 1")
    temperature = kwargs.get("temperature")
    if temperature is not None and not (_finite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature={temperature!r} {where} must be a number >= 0")
    top_k = kwargs.get("top_k")
    if top_k is not None and not (_finite(top_k) and float(top_k).is_integer() and top_k >= 0):
        raise ConfigError(
            f"top_k={top_k!r} {where} must be a whole number >= 0 (0 keeps every token)"
        )
    top_p = kwargs.get("top_p")
    if top_p is not None and not (_finite(top_p) and 0 < top_p <= 1):
        raise ConfigError(f"top_p={top_p!r} {where} must be a number in (0, 1]")
    until = kwargs.get("until")
    if until is not None and not (
        isinstance(until, str)
        or isinstance(until, list | tuple)
        and all(isinstance(u, str) for u in until)
    ):
        raise ConfigError(f"until={until!r} {where} must be a string or a list of strings")


def _finite(value: Any) -> bool:
    """A finite int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def sample_seed(base: int, *parts: object) -> int:
    """A per-sample seed from the run seed and the sample's identity (prompt hash, repeat index)."""
    digest = hashlib.sha256(":".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def build_runtime(cfg: RoutedConfig, slm=None, llm=None, tokenizer=None) -> RoutedRuntime:
    """Load (or take already loaded) models and assemble the decoder for ``cfg``."""
    check_router(cfg)  # a typo or a missing checkpoint fails before minutes of loading
    if cfg.latency_model:  # so does a latency model that cannot be read
        latency_model.load(Path(cfg.latency_model))
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    slm_dtype = resolve_dtype(cfg.slm_dtype or cfg.dtype, device)
    router = None
    if slm is None or llm is None:
        for ref in (cfg.slm, cfg.llm):  # damaged local files, before any weight loads
            preflight(ref)
        placement = PlacementRequest.of(cfg)  # checked on the LLM's config before weights load
        llm = None
        if placement is not None:  # a placement that cannot be stops the run before any load
            llm, tokenizer = load_model(cfg.llm, dtype, device, cfg.trust_remote_code, placement)
        # else the SLM first: it loads in a fraction of the LLM's time, and what is wrong with it
        # (or with the LLM's vocabulary size against its tokenizer) shows before the LLM loads
        slm, slm_tok = load_model(cfg.slm, slm_dtype, device, cfg.trust_remote_code)
        check_vocab_fits(slm, slm_tok, cfg.slm, "slm")
        _check_llm_vocab(cfg, slm_tok)
        # the router reads the SLM alone: a checkpoint that does not fit it fails before the LLM loads
        router = make_router(cfg.router, cfg, slm)
        if llm is None:
            llm, tokenizer = load_model(cfg.llm, dtype, device, cfg.trust_remote_code)
        check_same_vocab(slm_tok, tokenizer, cfg.slm, cfg.llm)
    else:  # models handed in: their own dtypes are what runs
        dtype, slm_dtype = llm.dtype, slm.dtype
    check_vocab_fits(slm, tokenizer, cfg.slm, "slm")
    check_vocab_fits(llm, tokenizer, cfg.llm, "llm")
    # the engines run copies of their own over the models' weights: the models stay as loaded
    vocab = min(
        slm.get_output_embeddings().weight.shape[0], llm.get_output_embeddings().weight.shape[0]
    )
    slm_engine = make_engine(slm, vocab, cfg.engine, cfg.prepack, compile=cfg.compile)
    # the LLM's logits meet the SLM's rows (sampling generators, routers) on the SLM's device
    llm_engine = make_engine(
        llm, vocab, cfg.engine, cfg.prepack, output_device=slm_engine.device, compile=cfg.compile
    )
    if router is None:  # models handed in
        router = make_router(cfg.router, cfg, slm)
    params_slm, params_llm = count_params(slm), count_params(llm)
    costs = _cost_model(cfg, slm_engine, llm_engine)
    decoder = MixedDecoder(
        slm_engine,
        llm_engine,
        router,
        tokenizer,
        costs,
        params=ParamSizes(
            slm=params_slm.total,
            llm=params_llm.total,
            router=router.num_params,
            slm_nominal=cfg.params_slm_nominal,
            llm_nominal=cfg.params_llm_nominal,
        ),
        eos_ids=eos_ids(tokenizer, llm),
        options=decode_options(
            router.kind,
            Schedule(cfg.schedule),
            cfg.llm_min_batch,
            cfg.guess_ahead,
            cfg.llm_lookahead,
        ),
    )
    return RoutedRuntime(
        cfg, slm, llm, tokenizer, router, decoder, device, dtype, slm_dtype, params_slm, params_llm
    )


def _check_llm_vocab(cfg: RoutedConfig, tokenizer) -> None:
    """The LLM's vocabulary size from its config against the SLM's tokenizer, before it loads."""
    size = config_vocab_size(cfg.llm, cfg.trust_remote_code)
    need = tokenizer_size(tokenizer)
    if size is not None and size < need:
        raise ConfigError(
            f"llm={cfg.llm!r} has a vocabulary of {size} but the shared tokenizer has {need} "
            "token ids; use an LLM of the same tokenizer (same vocabulary size or larger)"
        )


def make_engine(
    model: torch.nn.Module,
    vocab: int,
    choice: str = "auto",
    prepack: bool = True,
    output_device: torch.device | None = None,
    compile: bool = False,
) -> HFEngine:
    """The engine ``choice`` names for ``model``: ``native`` where it covers the model and agrees
    with Hugging Face's forward on a probe, ``hf`` otherwise (``auto``), or the one asked for; with
    ``prepack``, on prepacked CPU linear layers of its own; outputs on ``output_device`` (default:
    where the model's embedding runs); with ``compile``, its decode steps compiled (compiled.py)."""
    engine = _choose_engine(model, vocab, choice, prepack, output_device)
    return compile_engine(engine) if compile else engine


def _choose_engine(
    model: torch.nn.Module,
    vocab: int,
    choice: str,
    prepack: bool,
    output_device: torch.device | None,
) -> HFEngine:
    hf = HFEngine(model, vocab, prepack=prepack, output_device=output_device)
    if choice == "hf":
        return hf
    name = type(model).__name__
    reason = unsupported(model)
    if reason is None:
        native, reason = checked_engine(model, vocab, hf)
        if native is not None:
            return native
        if choice == "auto":
            log.warning(
                "native engine disagrees with %s's own forward (%s); using hf", name, reason
            )
    elif choice == "auto":
        log.info("%s runs on the hf engine: %s", name, reason)
    if choice == "native":
        raise ConfigError(f"engine=native cannot run {name}: {reason}; use engine=auto or hf")
    return hf


def with_costs(cfg: RoutedConfig, costs: CostModel) -> RoutedConfig:
    """``cfg`` with the cost constants it leaves to measurement taken from ``costs`` (another runtime
    over the same pair), so runs share one cost model, and with it their schedule, and measure once;
    a config that prices forwards by a latency model keeps it."""
    if cfg.latency_model:
        return cfg
    return cfg.replace(
        cost_slm=cfg.cost_slm or tuple(costs.slm),
        cost_llm=cfg.cost_llm or tuple(costs.llm),
        cost_router=cfg.cost_router or costs.router,
    )


def _cost_model(cfg: RoutedConfig, slm: HFEngine, llm: HFEngine) -> CostModel:
    if cfg.latency_model:  # read before any model loads (build_runtime): here it cannot fail
        fit = latency_model.load(Path(cfg.latency_model))
        return CostModel(
            latency_model.cost_pair(fit.slm),
            latency_model.cost_pair(fit.llm),
            cfg.cost_router or 0.0,
            source="latency_model",
            prices=fit,
        )
    if cfg.cost_slm and cfg.cost_llm:
        return CostModel(cfg.cost_slm, cfg.cost_llm, cfg.cost_router or 0.0, source="config")
    # A few timed warm-up forwards per model; recorded in run info so runs stay comparable.
    return CostModel(
        cfg.cost_slm or measure_forward_cost(slm),
        cfg.cost_llm or measure_forward_cost(llm),
        cfg.cost_router or 0.0,
        source="measured",
    )
