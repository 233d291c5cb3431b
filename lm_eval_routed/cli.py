"""`lm-eval-routed` command line: each subcommand lives in its own module and is imported lazily."""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "tasks-path": ("lm_eval_routed.cli:tasks_path", "print the folder holding the task YAMLs"),
    "exec-check": (
        "lm_eval_routed.evals.exec_check:exec_check_main",
        "run one solution against one problem",
    ),
    "demo": ("lm_eval_routed.jobs.demo:main", "score routers on the offline demo pair"),
    "sweep": (
        "lm_eval_routed.jobs.sweep_cli:main",
        "score a matrix of configs x tasks (resumable), then a leaderboard",
    ),
    "leaderboard": (
        "lm_eval_routed.jobs.merge:main",
        "one leaderboard over many sweeps and lm-eval runs",
    ),
    "diff": (
        "lm_eval_routed.jobs.diff_cli:main",
        "compare runs document by document: flips, paired CIs, accounting deltas",
    ),
    "view": (
        "lm_eval_routed.jobs.view:main",
        "one HTML page of a run's samples, the LLM's tokens highlighted",
    ),
    "train": ("lm_eval_routed.training.cli:main", "build router labels and train routers"),
    "calibrate": ("lm_eval_routed.training.calibrate:main", "calibrate entropy thresholds"),
}


def tasks_path(argv: list[str]) -> int:
    """Print the folder holding the project's lm-eval tasks."""
    from lm_eval_routed.paths import tasks_dir

    print(tasks_dir())
    return 0


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: lm-eval-routed COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; unknown commands list the valid ones."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"lm-eval-routed: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module, func = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
