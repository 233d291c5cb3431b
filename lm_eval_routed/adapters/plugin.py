"""What the start-up hook does once lm-eval or EvalPlus modules are imported (see ``hook.py``).

Each function gets the freshly executed module and registers ``routed`` or wraps one of its functions.
The wrappers leave every other model alone: they act only on a model that answers to the routed
methods (``begin_routed_evaluation``, ``restore_cached``, ``run_name``), so nothing heavy is imported
here.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

LM_EVAL_TARGET = "lm_eval_routed.adapters.lm_eval_model:RoutedLM"
_REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")


@dataclass
class _Evaluation:
    """One ``simple_evaluate`` call in progress: lm-eval's torch seed, the routed model it ran."""

    torch_seed: int | None
    lm: Any = None


_RUNNING: list[_Evaluation] = []  # innermost last


def lm_eval_seed() -> int | None:
    """lm-eval's torch seed (``--seed``'s third value) in the ``simple_evaluate`` call in progress."""
    return _RUNNING[-1].torch_seed if _RUNNING else None


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


def follow_lm_eval_logging(utils: ModuleType) -> None:
    """Print our log lines through lm-eval's handler, at its level, whenever lm-eval sets its up."""
    original = utils.setup_logging

    @functools.wraps(original)
    def setup_logging(*args, **kwargs):
        original(*args, **kwargs)
        theirs, ours = logging.getLogger("lm_eval"), logging.getLogger("lm_eval_routed")
        ours.setLevel(theirs.level)
        for handler in theirs.handlers:
            if handler not in ours.handlers:
                ours.addHandler(handler)
        ours.propagate = theirs.propagate  # as lm-eval's own lines: no second copy from the root

    utils.setup_logging = setup_logging


def patch_evaluator(evaluator: ModuleType) -> None:
    """Wrap ``evaluate`` (records gathered and attached to the samples it returns) and
    ``simple_evaluate`` (its torch seed seen by the model; the run named after the configuration)."""
    evaluate, simple_evaluate = evaluator.evaluate, evaluator.simple_evaluate
    signature = inspect.signature(simple_evaluate)

    @functools.wraps(evaluate)
    def routed_evaluate(*args, **kwargs):
        lm = kwargs["lm"] if "lm" in kwargs else args[0]
        begin = getattr(lm, "begin_routed_evaluation", None)
        if begin is None:
            return evaluate(*args, **kwargs)
        begin()
        results = evaluate(*args, **kwargs)
        lm.finish_routed_evaluation(results)
        if _RUNNING:
            _RUNNING[-1].lm = lm
        return results

    @functools.wraps(simple_evaluate)
    def routed_simple_evaluate(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        _RUNNING.append(_Evaluation(torch_seed=call.arguments["torch_random_seed"]))
        try:
            results = simple_evaluate(*args, **kwargs)
            tracker = call.arguments["evaluation_tracker"]
            lm = _RUNNING[-1].lm
            if results is not None and tracker is not None and lm is not None:
                _name_run(tracker, lm.run_name)
            return results
        finally:
            _RUNNING.pop()

    evaluator.evaluate = routed_evaluate
    evaluator.simple_evaluate = routed_simple_evaluate


def _name_run(tracker, name: str) -> None:
    """lm-eval names a run (and its output folder) from model_args keys such as ``pretrained``,
    ``model`` or ``engine``, else at random; a routed run takes its configuration's name."""
    from lm_eval.utils import sanitize_model_name

    config = tracker.general_config_tracker
    config.model_name, config.model_name_sanitized = name, sanitize_model_name(name)


def patch_caching(model: ModuleType) -> None:
    """Under ``--use_cache``, let a routed model take back the records of cached responses."""
    cls = model.CachingLM
    original = cls.__getattr__

    @functools.wraps(original)
    def getattr_(self, attr: str):
        found = original(self, attr)
        restore = getattr(self.lm, "restore_cached", None) if attr in _REQUEST_TYPES else None
        if restore is None:
            return found

        def answer(requests):
            out = found(requests)
            restore(attr, requests)
            return out

        return answer

    cls.__getattr__ = getattr_


def patch_sample_logging(tracker: ModuleType) -> None:
    """Write ``routed_<task>_<date>.jsonl`` beside each sample file of a routed run."""
    cls = tracker.EvaluationTracker
    original = cls.save_results_samples

    @functools.wraps(original)
    def save(self, task_name, samples):
        records = sys.modules.get("lm_eval_routed.adapters.lm_eval_records")
        if records is not None:
            records.write_jsonl(self, task_name, samples)
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
        from lm_eval_routed.errors import ConfigError

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
    """Let EvalPlus's codegen tell a routed decoder where its samples go (accounting sits beside),
    and refuse a resumed run under other settings before any model loads."""
    from lm_eval_routed.adapters.evalplus_backend import wrap_codegen, wrap_run_codegen

    codegen.codegen = wrap_codegen(codegen.codegen)
    codegen.run_codegen = wrap_run_codegen(codegen.run_codegen)
