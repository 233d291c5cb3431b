"""`routed` for EvalPlus: a thin DecoderBase over the shared RoutedRuntime.

``--model`` is a routed config file or preset name; ``ROUTED_MODEL_ARGS`` (lm-eval's ``k=v,...`` form)
overrides keys for one run. Accounting records are appended, one per sample as it is produced, to
``<samples>.routed.jsonl`` beside EvalPlus's samples file (keyed by ``task_id`` and sample index), and
run info goes to ``<samples>.routed_info.json`` beside its results JSON.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import jsonlines
from evalplus.provider.base import DecoderBase
from evalplus.provider.utility import EOS, extra_eos_for_direct_completion, make_raw_chat_prompt

from lm_eval_routed.config import ConfigError, load_config, parse_arg_string
from lm_eval_routed.decoder import GenRequest
from lm_eval_routed.runtime import build_runtime, sample_seed


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
        overrides = parse_arg_string(os.environ.get("ROUTED_MODEL_ARGS", ""))
        cfg = load_config({"config": name, "batch_size": batch_size, **overrides})
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
        self.accounting_path: Path | None = (
            None  # set by the codegen wrapper to sit beside the samples
        )
        self._task_of = _task_ids(dataset)
        self._index: Counter[str] = Counter()

    def is_direct_completion(self) -> bool:
        return self.force_base_prompt or self.tokenizer.chat_template is None

    def codegen(self, prompt: str, do_sample: bool = True, num_samples: int = 200) -> list[str]:
        """``num_samples`` completions of ``prompt``, generated as one batch by the routed decoder."""
        task_id = self._task_of.get(
            prompt.strip(), hashlib.sha256(prompt.encode()).hexdigest()[:16]
        )
        text = (
            prompt
            if self.is_direct_completion()
            else make_raw_chat_prompt(
                prompt, self.instruction_prefix, self.response_prefix, self.tokenizer
            )
        )
        ids = self.runtime.encode(text, self.max_new_tokens)
        first = self._index[task_id]
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
        self._index[task_id] += num_samples
        if self.accounting_path is not None:
            with jsonlines.open(self.accounting_path, mode="a") as out:
                out.write_all(
                    [{**r.record.key, **_without_key(r.record.to_dict())} for r in results]
                )
        return [r.text for r in results]


def _without_key(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "key"}


def _task_ids(dataset: str) -> dict[str, str]:
    """prompt (stripped) -> task_id, read with EvalPlus's own loaders (they honour the override paths)."""
    from evalplus.data import get_human_eval_plus, get_mbpp_plus

    loader = {"humaneval": get_human_eval_plus, "mbpp": get_mbpp_plus}.get(dataset)
    if loader is None:
        return {}
    return {task["prompt"].strip(): task_id for task_id, task in loader().items()}


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
    """``codegen`` that points a RoutedDecoder's accounting file beside the samples it writes."""

    @functools.wraps(original)
    def codegen(target_path: str, model: DecoderBase, *args: Any, **kwargs: Any):
        if isinstance(model, RoutedDecoder):
            base = target_path.removesuffix(".jsonl")
            model.accounting_path = Path(f"{base}.routed.jsonl")
            model.accounting_path.parent.mkdir(parents=True, exist_ok=True)
            info = Path(f"{base}.routed_info.json")
            info.write_text(json.dumps(model.runtime.info(), indent=2, default=str))
        return original(target_path, model, *args, **kwargs)

    return codegen
