"""`routed` for lm-evaluation-harness: a thin translation of lm-eval requests onto the MixedDecoder.

Generation goes through the shared ``RoutedRuntime``; log-likelihood requests are scored by the LLM
alone through the same runtime (``RoutedRuntime.score``, and their accounting says so), an empty
context after BOS as lm-eval's ``hf`` scores it. Each computed request gets an accounting record
(padding copies under data parallelism get none: ``lm_eval_records.plan``); when an evaluation ends,
the start-up hook's wrapper around lm-eval's ``evaluate`` gathers them from every rank and attaches
each sample's under ``"routed"`` (``finish_routed_evaluation``).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import (
    get_rolling_token_windows,
    make_disjoint_window,
    simple_parse_args_string,
)
from tqdm import tqdm

from lm_eval_routed.adapters import lm_eval_records as recs
from lm_eval_routed.adapters import plugin
from lm_eval_routed.adapters.joins import flat
from lm_eval_routed.config import RUN_ONLY_KEYS
from lm_eval_routed.config_args import given_keys, load_config
from lm_eval_routed.core.accounting import ParamSizes, SampleTally
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import append_jsonl
from lm_eval_routed.loading.runtime import (
    RoutedRuntime,
    build_runtime,
    check_gen_kwargs,
    sample_seed,
)

log = logging.getLogger(__name__)

_GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


class RoutedLM(TemplateLM):
    """lm-eval model type ``routed``: SLM+LLM token-level routing with per-sample accounting."""

    def __init__(
        self,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        device: str | None = None,
        model_args: dict[str, Any] | None = None,
        **more_model_args: Any,
    ) -> None:
        """``batch_size``, ``max_batch_size``, ``device``: lm-eval's own flags; the rest, model_args."""
        super().__init__()
        model_args = {**(model_args or {}), **more_model_args}
        model_args.pop("max_batch_size", None)  # no batch-size search: batches run as given
        # lm-eval passes its own default device (cuda:0) even when the user named none: only a
        # device that exists here is taken from it; model_args' device= is always honoured.
        if device and "device" not in model_args and _available(device):
            model_args["device"] = device
        model_args["batch_size"] = _batch_size(batch_size, model_args.get("batch_size"))
        self.accelerator = None
        if (
            int(os.environ.get("WORLD_SIZE", "1")) > 1
        ):  # `accelerate launch`: one data shard per process
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            atexit.register(_leave_process_group)
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            model_args.setdefault("device", str(self.accelerator.device))
        # an already built RoutedRuntime (sweeps, benchmarks)
        runtime = model_args.pop("runtime", None)
        # a ConfigError reaches the lm_eval CLI's user as one line (plugin.one_line_config_errors)
        self.cfg = runtime.cfg if runtime is not None else load_config(model_args)
        # lm-eval's --seed rules unless the user set `seed` (model_args or the config file);
        # a runtime handed in keeps its config's
        self.own_seed = runtime is not None or "seed" in given_keys(model_args)
        self.runtime: RoutedRuntime = runtime or build_runtime(self.cfg)
        self.tokenizer = self.runtime.tokenizer
        self.backend = "causal"
        self.records: list[dict[str, Any]] = []  # every accounting record this model produced
        self._evaluation: list[dict[str, Any]] = []  # this evaluation's, gathered when it ends
        self._live: set[tuple] = set()  # (task, doc, idx) this model computed in the latest call
        self._uncached = 0  # this evaluation's responses from lm-eval's cache without records
        self._warned: set[str] = set()  # things said once per model
        self._accounting = Path(self.cfg.accounting_path) if self.cfg.accounting_path else None
        # written beside each accounting_path record: which configuration (and sweep cell) wrote it
        self.tags: dict[str, Any] = {"config": self.cfg.label}

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict[str, Any] | None = None
    ) -> RoutedLM:
        """lm-eval's entry for ``--model_args k=v,...``."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
    ) -> RoutedLM:
        """lm-eval's entry for model_args as a dict.

        lm-eval passes its ``--batch_size``, ``--max_batch_size`` and ``--device`` as keyword arguments
        beside model_args, which may name ``batch_size`` and ``device`` too; merged into one call,
        the same name twice would raise a TypeError, so model_args travel apart and a key they set
        wins.
        """
        flags = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(model_args=dict(arg_dict), **flags)

    @classmethod
    def from_runtime(cls, runtime: RoutedRuntime) -> RoutedLM:
        """Wrap models that are already loaded (one load for a whole sweep)."""
        return cls(batch_size=runtime.cfg.batch_size, runtime=runtime)

    # -- what lm-eval reads ------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is scored after: BOS, else EOS, as generation and ``hf`` use."""
        return self.runtime.start_token_id

    @property
    def max_length(self) -> int:
        return self.runtime.max_length

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def tokenizer_name(self) -> str:
        return self.cfg.llm.replace("/", "__")

    @property
    def run_name(self) -> str:
        """lm-eval's name for this run (its output folder): the configuration's label and a digest
        of every setting that changes what the run writes, so two configurations never share one."""
        settings = dataclasses.asdict(self.cfg)
        kept = {k: v for k, v in settings.items() if k not in RUN_ONLY_KEYS}
        digest = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode())
        return f"routed__{'_'.join(self.cfg.label.split())}__{digest.hexdigest()[:8]}"

    @property
    def seed(self) -> int:
        """What per-sample seeds derive from: ``seed`` when the user set it, else lm-eval's torch
        seed (``--seed``'s third value), else the config's default."""
        theirs = None if self.own_seed else plugin.lm_eval_seed()
        return self.cfg.seed if theirs is None else theirs

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs
    ) -> list[int]:
        """Token ids of ``string`` with the shared tokenizer."""
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render a chat with the tokenizer's own template."""
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any]:
        if self.accelerator is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def get_model_info(self) -> dict[str, Any]:
        """Run-level info merged into lm-eval's results JSON."""
        info = self.runtime.info()
        info["routed"].update(seed=self.seed, seed_from="config" if self.own_seed else "lm_eval")
        return info

    # -- an evaluation's records (called by the start-up hook's wrapper around lm-eval's evaluate) --

    def begin_routed_evaluation(self) -> None:
        """Start collecting the records of one lm-eval evaluation."""
        self._evaluation, self._live, self._uncached = [], set(), 0

    def finish_routed_evaluation(self, results: dict[str, Any] | None) -> None:
        """Gather the evaluation's records from every rank; attach each sample's (rank 0 holds them)."""
        mine, self._evaluation = self._evaluation, []
        everyone = [r for part in self.gather_object(mine) for r in part] if self._padded else mine
        if results is not None and "samples" in results:
            recs.attach(results["samples"], everyone)
        if self._uncached:
            log.warning(
                "%d responses came from lm-eval's cache without their accounting records, so their "
                "samples carry none; delete the cache (--use_cache path) to compute them again",
                self._uncached,
            )

    def restore_cached(self, attr: str, requests: list) -> None:
        """Records of the requests lm-eval's ``--use_cache`` answered without this model."""
        cache = self.cache_hook.dbdict
        if cache is None:
            return
        live, self._live = self._live, set()
        slots = recs.plan(requests, self._padded)
        found, missing = recs.cached_records(cache, attr, requests, slots, live)
        for record in found:
            self._keep(record)
        self._uncached += missing

    @property
    def _padded(self) -> bool:
        """Whether lm-eval may pad this rank's requests (data parallelism)."""
        return self.world_size > 1

    # -- generation ----------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate each request with the routed decoder; records its accounting per sample."""
        slots = recs.plan(requests, self._padded)
        todo = [i for i, slot in enumerate(slots) if slot.genuine]
        gen_requests = [self._gen_request(requests[i].args, slots[i].key) for i in todo]
        bar = tqdm(total=len(todo), desc="routed generate", disable=disable_tqdm or self.rank)
        made: dict[int, dict[str, Any]] = {}

        def done(index: int, result) -> None:
            bar.update(1)
            made[index] = self._fresh(result.record.to_dict())

        results = self.runtime.generate(gen_requests, on_done=done)
        bar.close()
        text = dict(zip(todo, (r.text for r in results)))
        self._computed("generate_until", requests, slots, [made[j] for j in range(len(todo))])
        for i in todo:
            self.cache_hook.add_partial("generate_until", requests[i].args, text[i])
        return [text[slot.source] for slot in slots]

    def _gen_request(self, args: tuple, key: dict) -> GenRequest:
        context, kwargs = args
        check_gen_kwargs(kwargs)
        unknown = sorted(set(kwargs) - _GEN_KEYS - self._warned)
        if unknown:
            self._warned.update(unknown)
            log.warning("routed ignores generation kwargs %s", unknown)
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.get("max_gen_toks", self.cfg.max_gen_toks))
        temperature = float(kwargs.get("temperature", 0.0) or 0.0)
        do_sample = bool(kwargs.get("do_sample", False)) and temperature > 0
        return GenRequest(
            prompt_ids=self.runtime.encode(context, max_new),
            max_new_tokens=max_new,
            stop=tuple(until),
            do_sample=do_sample,
            temperature=temperature or 1.0,
            top_k=int(kwargs.get("top_k") or 0),
            top_p=float(kwargs.get("top_p", 1.0) or 1.0),
            seed=sample_seed(self.seed, key["prompt_hash"], key["repeat"]),
            key=key,
        )

    def _computed(self, attr: str, requests: list, slots: list, records: list[dict]) -> None:
        """Keep the records of the genuine requests (in slot order) this model just computed."""
        self._live = {(r["key"]["task"], r["key"]["doc_id"], r["key"]["idx"]) for r in records}
        for record in records:
            self._keep(record)
        if self.cache_hook.dbdict is not None:
            recs.store_cached(self.cache_hook.dbdict, attr, requests, slots, records)

    def _keep(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._evaluation.append(record)

    def _fresh(self, record: dict[str, Any]) -> dict[str, Any]:
        """A record this model just computed (not from lm-eval's cache), appended to
        ``accounting_path`` as produced, so an interrupted run keeps its rows."""
        record["cached"] = False
        if self._accounting is not None:
            append_jsonl(self._accounting, [{**flat(record), **self.tags}])
        return record

    # -- log-likelihood: the LLM scores, the accounting says so ---------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Score continuations with the LLM; one accounting record per request."""
        slots = recs.plan(requests, self._padded)
        todo = [i for i, slot in enumerate(slots) if slot.genuine]
        self._ll_tokens: list[int] = []
        out = super().loglikelihood([requests[i] for i in todo], disable_tqdm=disable_tqdm)
        scored = [self._scored(slots[i].key, n) for i, n in zip(todo, self._ll_tokens)]
        self._computed("loglikelihood", requests, slots, scored)
        answer = dict(zip(todo, out))
        return [answer[slot.source] for slot in slots]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        windows = [(ctx + cont)[-(self.max_length + 1) :] for _, ctx, cont in requests]
        n_conts = [len(cont) for _, _, cont in requests]
        self._ll_tokens = [len(w) - 1 for w in windows]
        return self.runtime.score(windows, n_conts, quiet=disable_tqdm or bool(self.rank))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Rolling-window log-likelihood of whole texts under the LLM (all windows scored at once)."""
        slots = recs.plan(requests, self._padded)
        todo = [i for i, slot in enumerate(slots) if slot.genuine]
        windows, owner = [], []
        for i in tqdm(todo, desc="routed rolling", disable=disable_tqdm or bool(self.rank)):
            for context, target in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(requests[i].args[0]),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((context, target))
                owner.append(i)
        scores = self.runtime.score([c + t for c, t in windows], [len(t) for _, t in windows])
        total = {i: 0.0 for i in todo}
        positions = {i: 0 for i in todo}
        for i, (logp, _), (context, target) in zip(owner, scores, windows):
            total[i] += logp  # in window order, as lm-eval's hf sums them
            positions[i] += len(context) + len(target) - 1
        scored = [self._scored(slots[i].key, positions[i]) for i in todo]
        self._computed("loglikelihood_rolling", requests, slots, scored)
        return [total[slot.source] for slot in slots]

    def _scored(self, key: dict, llm_tokens: int) -> dict[str, Any]:
        tally = SampleTally(llm_forward_tokens=llm_tokens, llm_calls=1)
        record = tally.record(ParamSizes(0, 0), key).to_dict()
        record.update(scored_by="llm", params_llm=self.runtime.params_llm.total)
        return self._fresh(record)


def _available(device: str) -> bool:
    return not str(device).startswith("cuda") or torch.cuda.is_available()


def _batch_size(given: int | str, model_arg: Any) -> int:
    """lm-eval's --batch_size (an int or 'auto[:N]') unless model_args set one."""
    value = model_arg if model_arg is not None else given
    if isinstance(value, str) and value.startswith("auto"):
        log.info("routed: batch_size=auto -> 8 (set an integer to choose)")
        return 8
    try:
        return int(str(value).strip())  # "2.5" and True are refused, not rounded
    except ValueError:
        named = "batch_size=" if model_arg is not None else "--batch_size "
        raise ConfigError(
            f"{named}{value!r} is not a whole number of rows; give an integer such as 8 (or auto)"
        ) from None


def _leave_process_group() -> None:
    """Tear the ranks' process group down while Python is still alive.

    A rank that exits with it still up aborts (gloo's worker threads are destroyed during interpreter
    finalisation: "terminate called without an active exception"), and the launcher then fails the
    whole run although every result was written.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
