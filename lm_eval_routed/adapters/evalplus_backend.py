"""`routed` for EvalPlus: a thin DecoderBase over the shared RoutedRuntime.

``--model`` is a routed config file or preset name; ``ROUTED_MODEL_ARGS`` (lm-eval's ``k=v,...`` form)
overrides keys for one run. Accounting records are appended, one per sample as it is produced, to
``<samples>.routed.jsonl`` beside EvalPlus's samples file (keyed by ``task_id`` and sample index), and
run info goes to ``<samples>.routed_info.json`` beside its results JSON.

EvalPlus hands ``codegen(prompt, ...)`` no task id, so the wrapper around its codegen loop gives the
decoder a prompt -> task_id table read from the same dataset (and version) that loop iterates; a prompt
not in it (the decoder used outside that loop) is keyed by a hash of the prompt instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import jsonlines
from evalplus.provider.base import DecoderBase
from evalplus.provider.utility import EOS, extra_eos_for_direct_completion, make_raw_chat_prompt

from lm_eval_routed.adapters.evalplus_data import check_overrides
from lm_eval_routed.adapters.joins import flat
from lm_eval_routed.config import RUN_ONLY_KEYS, RoutedConfig
from lm_eval_routed.config_args import load_config, parse_arg_string
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import append_jsonl, write_atomic
from lm_eval_routed.loading.runtime import build_runtime, sample_seed


class RoutedDecoder(DecoderBase):
    """EvalPlus decoder whose generations come from the MixedDecoder."""

    def __init__(
        self,
        name: str,
        dataset: str,
        batch_size: int = 1,
        temperature: float = 0.0,
        force_base_prompt: bool = False,
        instruction_prefix: str | None = None,
        response_prefix: str | None = None,
        **_: Any,
    ) -> None:
        cfg = _config(name, batch_size=batch_size)
        # every request asks for max_gen_toks: refused before loading, as a broken problem file is
        cfg.check_room(cfg.max_gen_toks)
        check_overrides(dataset)
        self.runtime = build_runtime(cfg)
        super().__init__(
            name=name,
            batch_size=cfg.batch_size,
            temperature=temperature,
            max_new_tokens=cfg.max_gen_toks,
            instruction_prefix=instruction_prefix,
            response_prefix=response_prefix,
        )
        self.tokenizer = self.runtime.tokenizer
        self.dataset = dataset
        self.force_base_prompt = force_base_prompt
        self.skip_special_tokens = True
        # a fresh list: EvalPlus's own decoders grow the shared module-level EOS list in place
        extra = (
            extra_eos_for_direct_completion(dataset) if self.is_direct_completion() else ["\n```\n"]
        )
        self.eos = [*EOS, *extra]
        # set by the codegen wrapper: accounting beside the samples, task ids, samples already there
        self.accounting_path: Path | None = None
        self.task_of: dict[str, str] = {}
        self.index: Counter[str] = Counter()

    def is_direct_completion(self) -> bool:
        return self.force_base_prompt or self.tokenizer.chat_template is None

    def codegen(self, prompt: str, do_sample: bool = True, num_samples: int = 200) -> list[str]:
        """``num_samples`` completions of ``prompt``, generated as one batch by the routed decoder."""
        task_id = (
            self.task_of.get(prompt.strip()) or hashlib.sha256(prompt.encode()).hexdigest()[:16]
        )
        text = (
            prompt
            if self.is_direct_completion()
            else make_raw_chat_prompt(
                prompt, self.instruction_prefix, self.response_prefix, self.tokenizer
            )
        )
        ids = self.runtime.encode(text, self.max_new_tokens)
        first = self.index[task_id]
        sampled = do_sample and self.temperature > 0
        reqs = [
            GenRequest(
                ids,
                self.max_new_tokens,
                stop=tuple(self.eos),
                do_sample=sampled,
                temperature=self.temperature or 1.0,
                top_p=0.95 if sampled else 1.0,
                seed=sample_seed(self.runtime.cfg.seed, task_id, first + i),
                key={"task_id": task_id, "sample": first + i},
            )
            for i in range(num_samples)
        ]
        results = self.runtime.generate(reqs)
        self.index[task_id] += num_samples
        rows = [flat(r.record.to_dict()) for r in results]
        # appended per task, so an interrupted run keeps what it generated
        extra = self.runtime.cfg.accounting_path
        for path in {p for p in (self.accounting_path, extra and Path(extra)) if p}:
            append_jsonl(path, rows)
        return [r.text for r in results]


def _config(name: str, **keys: Any) -> RoutedConfig:
    """The config ``--model`` names, with ``ROUTED_MODEL_ARGS``' overrides."""
    overrides = parse_arg_string(os.environ.get("ROUTED_MODEL_ARGS", ""))
    return load_config({"config": name, **keys, **overrides})


def _as_json(cfg: RoutedConfig) -> dict[str, Any]:
    """``cfg`` as the run info file records it."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _task_ids(dataset: str, version: str = "default") -> dict[str, str]:
    """prompt (stripped) -> task_id, read with EvalPlus's own loaders (they honour the override paths)."""
    from evalplus.data import get_human_eval_plus, get_mbpp_plus

    tasks: dict[str, Any] = {}
    if dataset in ("humaneval", "evalperf"):
        tasks.update(get_human_eval_plus(version=version))
    if dataset in ("mbpp", "evalperf"):
        tasks.update(get_mbpp_plus(version=version))
    return {task["prompt"].strip(): task_id for task_id, task in tasks.items()}


def _existing_samples(target_path: str) -> Counter[str]:
    """Samples per task already in EvalPlus's file: a resumed run continues their indices and seeds."""
    counts: Counter[str] = Counter()
    if target_path.endswith(".jsonl") and os.path.isfile(target_path):
        with jsonlines.open(target_path) as rows:
            counts.update(row["task_id"] for row in rows)
    elif os.path.isdir(target_path):  # --jsonl_fmt False: <task>/<sample>.py, "/" written as "_"
        for task in os.scandir(target_path):
            n = sum(f.endswith(".py") for f in os.listdir(task.path)) if task.is_dir() else 0
            counts["/".join(task.name.rsplit("_", 1))] = n
    return counts


def _check_resume(info_path: Path, cfg: dict[str, Any], samples_there: bool) -> None:
    """EvalPlus names its files from --model only: refuse to mix samples of two different configs."""
    if not samples_there or not info_path.is_file():
        return
    before = json.loads(info_path.read_text()).get("config")
    if before is None:  # written before the config was recorded: nothing to compare with
        return
    changed = sorted(k for k in cfg if k not in RUN_ONLY_KEYS and before.get(k) != cfg[k])
    if changed:
        raise SystemExit(
            f"evalplus --backend routed: {info_path.name} was written with other settings "
            f"({', '.join(changed)}); pass another --root or delete the old samples to start over"
        )


def wrap_make_model(original):
    """``make_model`` that builds a RoutedDecoder for ``backend="routed"`` and defers otherwise."""

    @functools.wraps(original)
    def make_model(model: str, backend: str, dataset: str, **kwargs: Any) -> DecoderBase:
        if backend != "routed":
            return original(model=model, backend=backend, dataset=dataset, **kwargs)
        try:
            return RoutedDecoder(name=model, dataset=dataset, **kwargs)
        except ConfigError as err:
            raise SystemExit(f"evalplus --backend routed: {err}") from None

    return make_model


def wrap_codegen(original):
    """``codegen`` that tells a RoutedDecoder its task ids and puts its accounting beside the samples."""

    @functools.wraps(original)
    def codegen(target_path: str, model: DecoderBase, *args: Any, **kwargs: Any):
        if isinstance(model, RoutedDecoder):
            base = target_path.removesuffix(".jsonl")
            info_path = Path(f"{base}.routed_info.json")
            cfg = _as_json(model.runtime.cfg)
            # EvalPlus continues a task's sample count only when resuming; so do indices and seeds
            resume = kwargs.get("resume", True)
            model.index = _existing_samples(target_path) if resume else Counter()
            # without resuming EvalPlus still appends to the file: samples there count either way
            _check_resume(info_path, cfg, bool(_existing_samples(target_path)))
            write_atomic(
                info_path,
                json.dumps({**model.runtime.info(), "config": cfg}, indent=2, default=str),
            )
            model.accounting_path = Path(f"{base}.routed.jsonl")
            model.task_of = _task_ids(
                kwargs.get("dataset", model.dataset), kwargs.get("version", "default")
            )
        return original(target_path, model, *args, **kwargs)

    return codegen


def wrap_run_codegen(original):
    """``run_codegen`` that, for ``backend="routed"``, refuses to add to samples written under other
    settings before any model loads (``codegen``'s wrapper checks again, with the path in hand)."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def run_codegen(*args: Any, **kwargs: Any):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        given = call.arguments
        if given["backend"] == "routed":
            try:
                cfg = _as_json(_config(given["model"]))
                check_overrides(given["dataset"])  # before EvalPlus makes its output folders
            except ConfigError as err:
                raise SystemExit(f"evalplus --backend routed: {err}") from None
            target = _target_path(given)
            base = target.removesuffix(".jsonl")
            _check_resume(Path(f"{base}.routed_info.json"), cfg, bool(_existing_samples(target)))
        return original(*args, **kwargs)

    return run_codegen


def _target_path(given: dict[str, Any]) -> str:
    """Where EvalPlus's ``run_codegen`` writes its samples for these arguments (as it names them)."""
    temperature = given["temperature"]
    if given["greedy"] and (temperature != 0 or given["bs"] != 1 or given["n_samples"] != 1):
        temperature = 0.0
    name = given["model"].strip("./").replace("/", "--") + f"_{given['backend']}_temp_{temperature}"
    if given["evalperf_type"]:
        name += f"-{given['evalperf_type']}"
    target = os.path.join(given["root"], given["dataset"], name)
    return target + ".jsonl" if given["jsonl_fmt"] else target
