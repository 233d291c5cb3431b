"""The reasoning tasks validate and run end to end on invented fixtures, with `routed` and with `hf`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import write_workspace

from lm_eval_routed.paths import tasks_dir

AIME = [
    {"problem": "What is 20 + 22?", "answer": "42"},
    {"problem": "What is 3 * 3?", "answer": "9"},
]
GPQA = [
    {
        "Question": f"Which one is right ({i})?",
        "Correct Answer": "right",
        "Incorrect Answer 1": "w1",
        "Incorrect Answer 2": "w2",
        "Incorrect Answer 3": "w3",
    }
    for i in range(2)
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    write_workspace(root)
    data = root / "data"
    data.mkdir()
    for name, rows in (("aime24", AIME), ("aime25", AIME), ("gpqa_diamond", GPQA)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, {**os.environ, "ROUTED_TASKS_DATA": str(data)}


def lm_eval(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "lm_eval", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.slow
def test_validate_group(env):
    proc = lm_eval(
        "validate", "--tasks", "routed_reasoning", "--include_path", str(tasks_dir()), env=env[1]
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["routed", "hf"])
def test_tasks_run_on_fixtures(env, model):
    root, environ = env
    args = (
        (
            f"slm={root / 'slm'},llm={root / 'llm'},router=random,p=0.5,cost_slm=0.001:0.0001,"
            "cost_llm=0.01:0.001"
        )
        if model == "routed"
        else f"pretrained={root / 'llm'}"
    )
    out = root / f"out_{model}"
    proc = lm_eval(
        "run",
        "--model",
        model,
        "--model_args",
        args,
        "--tasks",
        "routed_aime24,routed_aime25,routed_gpqa_diamond",
        "--limit",
        "2",
        "--gen_kwargs",
        "max_gen_toks=8",
        "--output_path",
        str(out),
        "--log_samples",
        "--device",
        "cpu",
        env=environ,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    for task in ("routed_aime24", "routed_aime25", "routed_gpqa_diamond"):
        assert 0.0 <= results[task]["pass@1,none"] <= 1.0  # random tiny models: scored, not right
    sample = json.loads(
        next(out.rglob("samples_routed_gpqa_diamond_*.jsonl")).read_text().splitlines()[0]
    )
    prompt = json.dumps(sample["arguments"])
    assert "Answer: $LETTER" in prompt and sample["target"] in ("A", "B", "C", "D")
