"""`routed` for lm-evaluation-harness: a thin translation of lm-eval requests onto the MixedDecoder.

Generation goes through the shared ``RoutedRuntime``; log-likelihood requests are scored by the LLM
alone through the same runtime (``RoutedRuntime.score``, and their accounting says so), an empty
context after BOS as lm-eval's ``hf`` scores it. Each
sample's accounting record is kept in ``RECORDS`` (the latest evaluation of each task) until lm-eval
writes its sample log, where ``attach_records`` adds it under the key ``"routed"`` and writes
the project's own JSONL beside it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import jsonlines
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import (
    get_rolling_token_windows,
    hash_string,
    make_disjoint_window,
    simple_parse_args_string,
)
from tqdm import tqdm

from lm_eval_routed.accounting import SampleTally, bare, records_by_sample
from lm_eval_routed.config import ConfigError, load_config
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.runtime import RoutedRuntime, build_runtime, sample_seed

log = logging.getLogger(__name__)

# task -> doc_id -> accounting dicts in request order, from the latest call that served the task;
# read when lm-eval saves its samples. A later evaluation of a task replaces its records, so a
# process that evaluates a task twice logs each run's own and holds one run's worth at most.
RECORDS: dict[str | None, dict[int | None, list[dict[str, Any]]]] = {}
_GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p"}


def _cli_error(err: ConfigError) -> None:
    """Under the lm_eval CLI a config mistake is one line on stderr, not a traceback."""
    if Path(sys.argv[0]).name in ("lm_eval", "lm-eval", "__main__.py"):
        raise SystemExit(f"lm_eval --model routed: {err}") from None
    raise err


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
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            model_args.setdefault("device", str(self.accelerator.device))
        # an already built RoutedRuntime (sweeps, benchmarks)
        runtime = model_args.pop("runtime", None)
        try:
            self.cfg = runtime.cfg if runtime is not None else load_config(model_args)
            self.runtime: RoutedRuntime = runtime or build_runtime(self.cfg)
        except ConfigError as err:
            _cli_error(err)
        self.tokenizer = self.runtime.tokenizer
        self.backend = "causal"
        self.records: list[dict[str, Any]] = []  # every accounting record this model produced
        self._pending: list[dict[str, Any]] = []  # produced since the last _share()
        self._accounting = Path(self.cfg.accounting_path) if self.cfg.accounting_path else None

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
        the same name twice was a TypeError. model_args travel apart, and a key they set wins.
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
        return self.runtime.info()

    # -- generation ----------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate each request with the routed decoder; records its accounting per sample."""
        repeat_of: dict[tuple, int] = defaultdict(int)
        gen_requests = []
        for inst in requests:
            context, kwargs = inst.args
            key = _key(inst, repeat_of, context)
            gen_requests.append(self._gen_request(context, dict(kwargs), key))
        bar = tqdm(total=len(requests), desc="routed generate", disable=disable_tqdm or self.rank)

        def done(_: int, result) -> None:
            bar.update(1)
            self._keep(result.record.to_dict())

        results = self.runtime.generate(gen_requests, on_done=done)
        bar.close()
        self._share()
        for inst, result in zip(requests, results):
            self.cache_hook.add_partial("generate_until", inst.args, result.text)
        return [r.text for r in results]

    def _gen_request(self, context: str, kwargs: dict[str, Any], key: dict) -> GenRequest:
        unknown = set(kwargs) - _GEN_KEYS
        if unknown:
            log.warning("routed ignores generation kwargs %s", sorted(unknown))
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
            top_p=float(kwargs.get("top_p", 1.0) or 1.0),
            seed=sample_seed(self.cfg.seed, key["prompt_hash"], key["repeat"]),
            key=key,
        )

    def _keep(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._pending.append(record)
        if self._accounting is not None:  # appended as produced: an interrupted run keeps its rows
            self._accounting.parent.mkdir(parents=True, exist_ok=True)
            with jsonlines.open(self._accounting, mode="a") as out:
                out.write(_flat(record))

    def _share(self) -> None:
        """Publish new records for the sample log; under data parallelism every rank gets all of them."""
        mine, self._pending = self._pending, []
        everyone = (
            [r for part in self.gather_object(mine) for r in part] if self.accelerator else mine
        )
        fresh: dict[str | None, dict[int | None, list[dict[str, Any]]]] = {}
        for record in everyone:
            docs = fresh.setdefault(record["key"].get("task"), {})
            docs.setdefault(record["key"].get("doc_id"), []).append(record)
        RECORDS.update(fresh)  # lm-eval serves each task's requests of a run in one call

    # -- log-likelihood: the LLM scores, the accounting says so ---------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Score continuations with the LLM; one accounting record per request."""
        self._ll_tokens: list[int] = []
        out = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        repeat_of: dict[tuple, int] = defaultdict(int)
        for inst, n in zip(requests, self._ll_tokens):
            self._keep_scored(_key(inst, repeat_of, inst.args[0]), n)
        self._share()
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        windows = [(ctx + cont)[-(self.max_length + 1) :] for _, ctx, cont in requests]
        n_conts = [len(cont) for _, _, cont in requests]
        self._ll_tokens = [len(w) - 1 for w in windows]
        return self.runtime.score(windows, n_conts, quiet=disable_tqdm or bool(self.rank))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Rolling-window log-likelihood of whole texts under the LLM."""
        totals = []
        repeat_of: dict[tuple, int] = defaultdict(int)
        for inst in tqdm(requests, desc="routed rolling", disable=disable_tqdm or self.rank):
            (text,) = inst.args
            wins = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            scored = self.runtime.score([c + t for c, t in wins], [len(t) for _, t in wins])
            totals.append(sum(lp for lp, _ in scored))
            self._keep_scored(
                _key(inst, repeat_of, text), sum(len(c) + len(t) - 1 for c, t in wins)
            )
        self._share()
        return totals

    def _keep_scored(self, key: dict, llm_tokens: int) -> None:
        tally = SampleTally(llm_forward_tokens=llm_tokens, llm_calls=1)
        record = tally.record((0, 0, 0), key).to_dict()
        record.update(scored_by="llm", params_llm=self.runtime.params_llm.total)
        self._keep(record)


def _available(device: str) -> bool:
    return not str(device).startswith("cuda") or torch.cuda.is_available()


def _batch_size(given: int | str, model_arg: Any) -> int:
    """lm-eval's --batch_size (an int or 'auto[:N]') unless model_args set one."""
    value = model_arg if model_arg is not None else given
    if isinstance(value, str) and value.startswith("auto"):
        log.info("routed: batch_size=auto -> 8 (set an integer to choose)")
        return 8
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size={value!r} is not an integer (or 'auto')") from None


def _key(inst, repeat_of: dict[tuple, int], context: str) -> dict[str, Any]:
    """Join key with lm-eval's sample log: task, doc_id, request idx, repeat, prompt_hash."""
    ident = (inst.task_name, inst.doc_id, inst.idx)
    repeat = repeat_of[ident]
    repeat_of[ident] += 1
    return {
        "task": inst.task_name,
        "doc_id": inst.doc_id,
        "idx": inst.idx,
        "repeat": repeat,
        "prompt_hash": hash_string(context),
    }


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    return {**record["key"], **bare(record)}


def _records_of(task_name: str, samples: list[dict]) -> list[list[dict[str, Any]]]:
    """Each logged sample of ``task_name``'s records, from those kept in ``RECORDS``."""
    return records_by_sample(samples, RECORDS.get(task_name, {}))


def attach_records(tracker, task_name: str, samples: list[dict]) -> None:
    """Add each sample's records under ``"routed"`` and write ``routed_<task>_<date>.jsonl`` beside."""
    rows, written = [], set()
    for sample, records in zip(samples, _records_of(task_name, samples)):
        sample["routed"] = [bare(r) for r in records]
        if sample.get("doc_id") not in written:  # a doc logged once per filter: its rows once
            written.add(sample.get("doc_id"))
            rows += [{**_flat(r), "doc_id": sample.get("doc_id")} for r in records]  # lm-eval's
    if not tracker.output_path or not rows:
        return
    path = Path(tracker.output_path)
    path = (
        path.parent
        if path.suffix == ".json"
        else path / tracker.general_config_tracker.model_name_sanitized
    )
    path.mkdir(parents=True, exist_ok=True)
    with jsonlines.open(path / f"routed_{task_name}_{tracker.date_id}.jsonl", mode="a") as out:
        out.write_all(rows)
