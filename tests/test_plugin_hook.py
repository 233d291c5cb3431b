"""The start-up hook registers `routed` without hiding lm-eval's own models or slowing start-up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.slow  # a fresh interpreter indexes every lm-eval task
def test_routed_and_builtin_models_resolve():
    out = python(
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('routed').__name__, get_model('hf').__name__)"
    )
    assert out == "RoutedLM HFLM"


def test_plain_start_up_imports_nothing_heavy():
    out = python(
        "import sys\n"
        "names = ('torch', 'transformers', 'lm_eval', 'lm_eval_routed.config')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print('lm_eval_routed.adapters.hook' in sys.modules, heavy)"
    )
    assert out == "True []"


@pytest.mark.slow  # a fresh interpreter indexes every lm-eval task
def test_project_tasks_visible_without_include_path():
    # every task and group the shipped YAML files name, read here without lm-eval's loader
    names = {
        m.group(1)
        for path in TASKS.rglob("*.yaml")
        for m in re.finditer(r"^(?:task|group): (\S+)", path.read_text(), re.M)
    }
    assert {"routed_demo", "routed_aime24", "routed_reasoning"} <= names
    out = python(
        "import json\n"
        "from lm_eval.tasks import TaskManager\n"
        f"names = {sorted(names)!r}\n"
        "print(json.dumps([n for n in names if n not in TaskManager().all_tasks]))"
    )
    assert json.loads(out) == [], f"not visible without --include_path: {out}"


def test_start_up_hook_imports_nothing_but_itself():
    """The hook runs at every start-up: its import tree must hold only the package and itself.

    Checked on the tree ``-X importtime`` prints, not on its timings, which a busy machine inflates.
    """
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    # "import time: self [us] | cumulative | <indent>name"; a module's imports precede it, deeper
    names = [
        line.split("|")[2].rstrip()
        for line in out.splitlines()
        if line.startswith("import time:") and line.count("|") == 2 and "cumulative" not in line
    ]
    at = next(i for i, n in enumerate(names) if n.strip() == "lm_eval_routed.adapters.hook")
    depth = len(names[at]) - len(names[at].lstrip())
    below = []
    for name in reversed(names[:at]):
        if len(name) - len(name.lstrip()) <= depth:
            break
        below.append(name.strip())
    # only its parent packages, whose __init__ files hold nothing but docstrings
    assert below == ["lm_eval_routed.adapters", "lm_eval_routed"], below
