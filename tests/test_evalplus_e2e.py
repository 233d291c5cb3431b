"""`evalplus.evaluate --backend routed` end to end on a two-problem HumanEval-format file, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_workspace

# two invented problems in HumanEval+ format
PROBLEMS = [
    {
        "task_id": "HumanEval/0",
        "entry_point": "add_one",
        "prompt": 'def add_one(x: int) -> int:\n    """Return x plus one."""\n',
        "canonical_solution": "    return x + 1\n",
        "contract": "",
        "base_input": [[1], [5]],
        "plus_input": [[-3]],
        "atol": 0,
    },
    {
        "task_id": "HumanEval/1",
        "entry_point": "twice",
        "prompt": 'def twice(s: str) -> str:\n    """Return s repeated two times."""\n',
        "canonical_solution": "    return s * 2\n",
        "contract": "",
        "base_input": [["ab"]],
        "plus_input": [[""]],
        "atol": 0,
    },
]


@pytest.mark.slow
def test_evaluate_writes_results_and_accounting(tmp_path):
    ws = write_workspace(tmp_path / "ws")
    data = tmp_path / "HumanEvalPlus.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    cfg = tmp_path / "pair.yaml"
    cfg.write_text(
        f"slm: {ws / 'slm'}\nllm: {ws / 'llm'}\nrouter: random\np: 0.5\n"
        "cost_slm: [0.001, 0.0001]\ncost_llm: [0.01, 0.001]\nmax_gen_toks: 24\n"
    )
    env = {
        **os.environ,
        "HUMANEVAL_OVERRIDE_PATH": str(data),
        "ROUTED_MODEL_ARGS": "seed=7",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    cmd = [
        str(Path(sys.executable).parent / "evalplus.evaluate"),
        "--model",
        str(cfg),
        "--backend",
        "routed",
        "--dataset",
        "humaneval",
        "--greedy",
        "--root",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = list((tmp_path / "out").rglob("*_eval_results.json"))
    assert results, proc.stdout[-2000:]
    evaluated = json.loads(results[0].read_text())["eval"]
    assert set(evaluated) == {"HumanEval/0", "HumanEval/1"}
    records = [
        json.loads(x)
        for x in next((tmp_path / "out").rglob("*.routed.jsonl")).read_text().splitlines()
    ]
    assert sorted((r["task_id"], r["sample"]) for r in records) == [
        ("HumanEval/0", 0),
        ("HumanEval/1", 0),
    ]
    assert all(r["tokens_slm"] + r["tokens_llm"] == r["tokens"] > 0 for r in records)
    info = json.loads(next((tmp_path / "out").rglob("*.routed_info.json")).read_text())
    assert info["routed"]["router"] == "random" and info["routed"]["seed"] == 7


def test_other_backends_still_dispatch_to_evalplus():
    import evalplus.provider as provider

    # EvalPlus answers an unknown backend with None; the wrapper must hand it through untouched
    assert provider.make_model(model="x", backend="no-such-backend", dataset="humaneval") is None
    assert provider.make_model.__wrapped__.__module__ == "evalplus.provider"
