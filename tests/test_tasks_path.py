"""`lm-eval-routed tasks-path` prints the folder a user hands to `--include_path`: it must be the
project's task folder, and lm-eval, pointed at it alone, must find and build the project's tasks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from lm_eval_routed.cli import main

CHECKOUT_TASKS = Path(__file__).resolve().parents[1] / "tasks"  # the folder this checkout ships


def shipped_names(folder: Path) -> set[str]:
    """The task and group names the YAML files of ``folder`` declare on their first line."""
    names = set()
    for path in folder.rglob("*.yaml"):
        match = re.match(r"(?:task|group): (\S+)\n", path.read_text())
        if match:
            names.add(match.group(1))
    return names


def test_tasks_path_prints_the_shipped_task_folder(capsys):
    assert main(["tasks-path"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1
    folder = Path(printed[0])
    assert folder.is_dir() and folder.resolve() == CHECKOUT_TASKS
    names = shipped_names(folder)
    assert {"routed_demo", "routed_aime24", "routed_gpqa_diamond", "routed_reasoning"} <= names

    # the console entry prints the same line
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval_routed.cli", "tasks-path"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout == f"{folder}\n", proc.stderr[-2000:]


def test_lm_eval_finds_the_tasks_at_the_printed_path(capsys):
    from lm_eval.tasks import TaskManager, get_task_dict

    main(["tasks-path"])
    folder = capsys.readouterr().out.strip()
    # only the printed folder: lm-eval's own tasks and the start-up hook's addition stay out
    manager = TaskManager(include_path=folder, include_defaults=False)
    assert shipped_names(CHECKOUT_TASKS) <= set(manager.all_tasks)
    task = get_task_dict(["routed_demo"], manager)["routed_demo"]  # its utils.py resolves there
    assert len(task.eval_docs) > 0
