"""`lm_eval --model routed` end to end, as a user runs it, on a tiny task and a tiny local model pair."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("e2e"))


def run_lm_eval(root: Path, model_args: str, task: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "run",
        "--model",
        "routed",
        "--model_args",
        model_args,
        "--tasks",
        task,
        "--include_path",
        str(root / "tasks"),
        "--output_path",
        str(root / "out"),
        "--log_samples",
        "--limit",
        "3",
        "--batch_size",
        "2",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_generate_until_logs_accounting(workspace):
    args = (
        f"slm={workspace / 'slm'},llm={workspace / 'llm'},router=random,p=0.5,"
        "cost_slm=0.001:0.0001,cost_llm=0.01:0.001"
    )
    proc = run_lm_eval(workspace, args, "tiny_routed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = list((workspace / "out").rglob("samples_tiny_routed_*.jsonl"))
    assert samples, proc.stderr[-2000:]
    rows = [json.loads(line) for line in samples[0].read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        (rec,) = row["routed"]
        assert rec["tokens_slm"] + rec["tokens_llm"] == rec["tokens"] > 0
        assert rec["activated_params"] > 0
    ours = list((workspace / "out").rglob("routed_tiny_routed_*.jsonl"))
    joined = [json.loads(line) for line in ours[0].read_text().splitlines()]
    assert {(r["doc_id"], r["prompt_hash"]) for r in joined} == {
        (r["doc_id"], r["prompt_hash"]) for r in rows
    }
    results = json.loads(next((workspace / "out").rglob("results_*.json")).read_text())
    assert results["config"]["routed"]["router"] == "random"


@pytest.mark.slow
def test_multiple_choice_is_scored_by_llm(workspace):
    args = (
        f"slm={workspace / 'slm'},llm={workspace / 'llm'},cost_slm=0.001:0.0001,cost_llm=0.01:0.001"
    )
    proc = run_lm_eval(workspace, args, "tiny_routed_mc")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        json.loads(line)
        for line in next((workspace / "out").rglob("samples_tiny_routed_mc_*.jsonl"))
        .read_text()
        .splitlines()
    ]
    assert all(len(r["routed"]) == 2 and r["routed"][0]["scored_by"] == "llm" for r in rows)


@pytest.mark.slow
def test_bad_model_arg_is_one_line(workspace):
    proc = run_lm_eval(workspace, "router=random,p=2", "tiny_routed")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "p=2.0 is out of range" in proc.stderr
