"""Import hook run at interpreter start-up (``lm_eval_routed.pth``): teach lm-eval and EvalPlus `routed`.

lm-eval 0.4.x reads no plugin entry points and EvalPlus picks backends in an if/elif, so we wait for
their modules to be imported and register right after they execute. Nothing is imported here besides
``sys``: unrelated programs pay one finder lookup per import and nothing else.
"""

import sys

# module name -> "lm_eval_routed.module:function" run with the freshly executed module
_AFTER_IMPORT = {
    "lm_eval.utils": "lm_eval_routed.adapters.plugin:follow_lm_eval_logging",
    "lm_eval.api.model": "lm_eval_routed.adapters.plugin:patch_caching",
    "lm_eval.api.registry": "lm_eval_routed.adapters.plugin:register_lm_eval",
    "lm_eval.evaluator": "lm_eval_routed.adapters.plugin:patch_evaluator",
    "lm_eval.tasks.manager": "lm_eval_routed.adapters.plugin:add_task_path",
    "lm_eval.loggers.evaluation_tracker": "lm_eval_routed.adapters.plugin:patch_sample_logging",
    "lm_eval._cli.harness": "lm_eval_routed.adapters.plugin:patch_lm_eval_cli",
    "lm_eval.__main__": "lm_eval_routed.adapters.plugin:patch_lm_eval_cli",
    "evalplus.provider": "lm_eval_routed.adapters.plugin:register_evalplus",
    "evalplus.codegen": "lm_eval_routed.adapters.plugin:patch_evalplus_codegen",
}


class _Loader:
    """Wraps the real loader: execute the module, then run our registration on it."""

    def __init__(self, loader, target):
        self._loader = loader
        self._target = target

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        import importlib

        mod_name, func = self._target.split(":")
        getattr(importlib.import_module(mod_name), func)(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ... pass through
        return getattr(self._loader, name)


class _Finder:
    """A meta-path finder that only answers for the handful of modules we hook."""

    def find_spec(self, name, path=None, target=None):
        hook = _AFTER_IMPORT.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, hook)
                return spec
        return None


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
