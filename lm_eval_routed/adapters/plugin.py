"""What the start-up hook does once lm-eval or EvalPlus modules are imported (see ``_hook.py``)."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
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


def patch_lm_eval_cli(cli: ModuleType) -> None:
    """Our ConfigErrors (model_args, task data, generation kwargs) end the lm_eval CLI with one line.

    lm-eval >= 0.4.10 runs every subcommand through ``HarnessCLI.execute`` (``lm_eval`` and
    ``python -m lm_eval`` alike); older releases start at ``lm_eval.__main__.cli_evaluate``.
    """
    harness = getattr(cli, "HarnessCLI", None)
    if harness is not None:
        harness.execute = one_line_config_errors(harness.execute)
    elif callable(getattr(cli, "cli_evaluate", None)):
        cli.cli_evaluate = one_line_config_errors(cli.cli_evaluate)


def one_line_config_errors(run: Callable) -> Callable:
    """``run`` with a ConfigError (raised or chained under another error) printed as one line on
    stderr and exit status 2, instead of lm-eval's traceback."""
    if getattr(run, "_one_line_errors", False):
        return run

    @functools.wraps(run)
    def wrapped(*args, **kwargs):
        from lm_eval_routed.config import ConfigError

        try:
            return run(*args, **kwargs)
        except Exception as err:
            cause: BaseException | None = err
            seen: set[int] = set()
            while (
                cause is not None and not isinstance(cause, ConfigError) and id(cause) not in seen
            ):
                seen.add(id(cause))
                cause = cause.__cause__ or cause.__context__
            if not isinstance(cause, ConfigError):
                raise
            print(f"lm_eval: {cause}", file=sys.stderr)
            raise SystemExit(2) from None

    wrapped._one_line_errors = True  # type: ignore[attr-defined]
    return wrapped


def register_evalplus(provider: ModuleType) -> None:
    """Route ``--backend routed`` in EvalPlus's ``make_model`` to our decoder; others pass through."""
    from lm_eval_routed.adapters.evalplus_backend import wrap_make_model

    provider.make_model = wrap_make_model(provider.make_model)


def patch_evalplus_codegen(codegen: ModuleType) -> None:
    """Let EvalPlus's codegen tell a routed decoder where its samples go (accounting sits beside)."""
    from lm_eval_routed.adapters.evalplus_backend import wrap_codegen

    codegen.codegen = wrap_codegen(codegen.codegen)
