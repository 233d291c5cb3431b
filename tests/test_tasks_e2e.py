"""The reasoning tasks validate and run end to end on invented fixtures, with `routed` and with `hf`."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import zlib

import pytest
from helpers import write_workspace

from lm_eval_routed.paths import tasks_dir

AIME = [
    {"problem": "What is 20 + 22?", "answer": "42"},
    {"problem": "What is 3 * 3?", "answer": "9"},
]
TASKS = ("routed_aime24", "routed_aime25", "routed_gpqa_diamond", "routed_livecodebench")
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


def _packed(tests: list[dict]) -> str:
    """Private tests the way the hub stores many of them: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def _lcb_row(qid: str, date: str, stdin: bool) -> dict:
    if stdin:
        public = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
        private = _packed([{"input": "5 7\n", "output": "12\n", "testtype": "stdin"}])
        starter, meta = "", {}
    else:
        public = [{"input": "3", "output": "6", "testtype": "functional"}]
        private = json.dumps([{"input": "-4", "output": "-8", "testtype": "functional"}])
        starter = "class Solution:\n    def twice(self, x: int) -> int:\n        "
        meta = {"func_name": "twice"}
    return {
        "question_title": f"invented {qid}",
        "question_content": "Print the sum of two integers." if stdin else "Return twice x.",
        "platform": "atcoder" if stdin else "leetcode",
        "question_id": qid,
        "contest_id": "c0",
        "contest_date": f"{date}T00:00:00",
        "starter_code": starter,
        "difficulty": "easy",
        "public_test_cases": json.dumps(public),
        "private_test_cases": private,
        "metadata": json.dumps(meta),
    }


# The third row falls outside the default contest window and must be dropped.
LCB = [
    _lcb_row("q1", "2024-09-01", stdin=True),
    _lcb_row("q2", "2024-10-01", stdin=False),
    _lcb_row("q3", "2023-06-01", stdin=True),
]
GOOD = {
    "q1": "<think>```python\nprint(0)\n```</think>\n```python\na, b = map(int, input().split())\n"
    "print(a + b)\n```",
    "q2": "```python\nclass Solution:\n    def twice(self, x: int) -> int:\n        return 2 * x\n```",
}


def _lcb_utils():
    path = tasks_dir() / "livecodebench" / "utils.py"
    spec = importlib.util.spec_from_file_location("lcb_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_livecodebench_window_execution_and_scoring(tmp_path, monkeypatch):
    (tmp_path / "livecodebench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LCB))
    monkeypatch.setenv("ROUTED_TASKS_DATA", str(tmp_path))
    utils = _lcb_utils()
    docs = list(utils.load_livecodebench()["test"])
    assert [d["question_id"] for d in docs] == ["q1", "q2"]
    assert "### Format:" in utils.doc_to_text(docs[1]) and "def twice" in utils.doc_to_text(docs[1])
    assert utils.doc_to_text(docs[0]).rstrip().endswith("(use the provided format with backticks)")
    # q1: a right and a wrong answer; q2: two right answers (n = 2 repeats each)
    resps = [[GOOD["q1"], "```python\nprint(4)\n```"], [GOOD["q2"], GOOD["q2"]]]
    verdicts = utils.execute(resps, docs)
    passed = [[json.loads(v)["passed"] for v in row] for row in verdicts]
    assert passed == [[True, False], [True, True]]
    assert len(json.loads(verdicts[0][0])["tests"]) == 2  # public + decoded private test
    m1, m2 = (utils.process_results(d, v) for d, v in zip(docs, verdicts))
    assert (m1["pass@1"], m1["pass@2"], m2["pass@2"]) == (0.5, 1.0, 1.0)
    items = [m1["mean_over_repeats"], m2["mean_over_repeats"]]
    assert utils.mean_over_repeats(items) == pytest.approx(0.75)
    assert utils.stderr_over_repeats(items) == pytest.approx(0.25)  # repeat scores 1.0 and 0.5
    with pytest.raises(Exception, match="widen the window"):
        utils.load_livecodebench(start_date="2030-01-01", end_date=None)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    write_workspace(root)
    data = root / "data"
    data.mkdir()
    files = (("aime24", AIME), ("aime25", AIME), ("gpqa_diamond", GPQA), ("livecodebench", LCB))
    for name, rows in files:
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
        "routed_reasoning",
        "--include_path",
        str(tasks_dir()),
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
    # each task's score is the mean of its documents' logged scores; the group's, of its tasks'
    for task in TASKS:
        logged = [json.loads(x) for x in next(out.rglob(f"samples_{task}_*.jsonl")).open()]
        assert len(logged) == 2
        want = sum(s["pass@1"] for s in logged) / 2
        assert results[task]["pass@1,none"] == pytest.approx(want), task
    group = sum(results[t]["pass@1,none"] for t in TASKS) / len(TASKS)
    assert results["routed_reasoning"]["pass@1,none"] == pytest.approx(group)
    logged = json.loads(
        next(out.rglob("samples_routed_livecodebench_*.jsonl")).read_text().splitlines()[0]
    )["filtered_resps"][0][0]  # one request per doc, holding its list of repeats
    verdict = json.loads(logged)
    assert verdict["passed"] is False and "tests" in verdict  # ran through the sandbox filter
    sample = json.loads(
        next(out.rglob("samples_routed_gpqa_diamond_*.jsonl")).read_text().splitlines()[0]
    )
    prompt = json.dumps(sample["arguments"])
    assert "Answer: $LETTER" in prompt and sample["target"] in ("A", "B", "C", "D")


@pytest.mark.slow
def test_repeats_report_pass_at_k_and_stderr_over_repeats(env, tmp_path):
    """A task copied with ``repeats: 2`` reports pass@2 and the mean/stderr over its two repeats."""
    root, environ = env
    shipped = tasks_dir() / "aime" / "routed_aime24.yaml"
    (tmp_path / "aime_x2.yaml").write_text(f"include: {shipped}\ntask: aime_x2\nrepeats: 2\n")
    out = tmp_path / "out"
    proc = lm_eval(
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={root / 'llm'}",
        "--tasks",
        "aime_x2",
        "--include_path",
        str(tmp_path),
        "--limit",
        "2",
        "--gen_kwargs",
        "max_gen_toks=8",
        "--output_path",
        str(out),
        "--device",
        "cpu",
        env=environ,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["aime_x2"]
    for key in ("pass@1,none", "pass@2,none", "mean_over_repeats,none", "stderr_over_repeats,none"):
        assert key in res, sorted(res)
    assert res["pass@1,none"] == pytest.approx(res["mean_over_repeats,none"])
    assert "pass@4,none" not in res  # k > n is not reported
