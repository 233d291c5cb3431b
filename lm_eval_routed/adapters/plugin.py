"""What the start-up hook does once lm-eval or EvalPlus modules are imported (see ``_hook.py``)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

LM_EVAL_TARGET = "lm_eval_routed.adapters.lm_eval_model:RoutedLM"


def register_lm_eval(registry: ModuleType) -> None:
    """Register `routed` lazily, after lm-eval's own models (its get_model skips them otherwise)."""
    import lm_eval.models  # noqa: F401  (fills the registry with hf, vllm, ...)

    if "routed" not in registry.model_registry:
        registry.model_registry.register("routed", target=LM_EVAL_TARGET)


def add_task_path(manager: ModuleType) -> None:
    """Index the project's tasks next to lm-eval's defaults, so no ``--include_path`` is needed."""
    cls = manager.TaskManager
    original = cls.__init__

    @functools.wraps(original)
    def init(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
        from lm_eval_routed.paths import tasks_dir

        ours = tasks_dir()
        given = include_path if isinstance(include_path, list | tuple) else [include_path]
        given = [p for p in given if p]
        if include_defaults and ours.is_dir() and all(Path(p).resolve() != ours for p in given):
            include_path = [*given, str(ours)]
        original(
            self,
            verbosity=verbosity,
            include_path=include_path,
            include_defaults=include_defaults,
            metadata=metadata,
        )

    cls.__init__ = init


def patch_sample_logging(tracker: ModuleType) -> None:
    """Attach each sample's accounting record to lm-eval's sample log and write our own JSONL."""
    cls = tracker.EvaluationTracker
    original = cls.save_results_samples

    @functools.wraps(original)
    def save(self, task_name, samples):
        import sys

        model = sys.modules.get("lm_eval_routed.adapters.lm_eval_model")
        if model is not None:
            model.attach_records(self, task_name, samples)
        return original(self, task_name, samples)

    cls.save_results_samples = save


def register_evalplus(provider: ModuleType) -> None:
    """Route ``--backend routed`` in EvalPlus's ``make_model`` to our decoder; others pass through."""
    from lm_eval_routed.adapters.evalplus_backend import wrap_make_model

    provider.make_model = wrap_make_model(provider.make_model)


def patch_evalplus_codegen(codegen: ModuleType) -> None:
    """Let EvalPlus's codegen tell a routed decoder where its samples go (accounting sits beside)."""
    from lm_eval_routed.adapters.evalplus_backend import wrap_codegen

    codegen.codegen = wrap_codegen(codegen.codegen)
