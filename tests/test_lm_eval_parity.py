"""lm-eval's own entry points over `routed`, flag by flag: data parallelism, --seed, --use_cache, its
log, its output folders, simple_evaluate's samples, and scores equal to its `hf` model's (rolling
log-likelihoods, greedy generation, multiple choice)."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
from helpers import MC_TASK, char_tokenizer, tiny_llama, write_workspace
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM

from lm_eval_routed.adapters.lm_eval_model import RoutedLM
from lm_eval_routed.config import RoutedConfig
from lm_eval_routed.config_args import load_config
from lm_eval_routed.loading.runtime import build_runtime

ROLLING_TASK = """\
task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{ (q ~ ' = ' ~ a ~ '. ') * 80 }}}}"
metric_list:
  - metric: word_perplexity
"""
COSTS = "cost_slm=0.001:0.0001,cost_llm=0.01:0.001"
# the fields of a record that depend on what was computed, not on the batch a rank ran it in
SAME_EVERYWHERE = ("tokens", "tokens_slm", "tokens_llm", "llm_positions", "scored_by", "cached")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = write_workspace(tmp_path_factory.mktemp("parity"))
    (root / "tasks" / "tiny_rolling.yaml").write_text(ROLLING_TASK.format(data=root / "data.jsonl"))
    # hidden size 256: wide enough that oneDNN's prepacked kernels round differently from torch's
    tiny_llama(2, seed=3, hidden=256).save_pretrained(root / "wide")
    char_tokenizer().save_pretrained(root / "wide")
    return root


def pair_args(root: Path, **more: str) -> dict[str, str]:
    args = dict(p.split("=") for p in COSTS.split(","))
    return {"slm": str(root / "slm"), "llm": str(root / "llm"), **args, **more}


@functools.cache
def task_manager(tasks: Path) -> TaskManager:
    """The workspace's tasks alone (indexing lm-eval's thousands takes longer than the tests)."""
    return TaskManager(include_path=str(tasks), include_defaults=False)


def evaluate(root: Path, model_args: dict, tasks: list[str], **kwargs) -> dict:
    """``lm_eval.simple_evaluate`` over the workspace's tasks, three docs each."""
    manager = task_manager(root / "tasks")
    kwargs = {"limit": 3, "batch_size": 2, "log_samples": True, **kwargs}
    return lm_eval.simple_evaluate(
        model=kwargs.pop("model", "routed"),
        model_args=model_args,
        tasks=tasks,
        task_manager=manager,
        **kwargs,
    )


def cli(root: Path, out: Path, model_args: str, *extra: str, launcher=()) -> str:
    """Run ``lm_eval run`` (under ``launcher`` if given); returns its stderr."""
    cmd = [
        *(launcher or [sys.executable, "-m"]),
        "lm_eval",
        "run",
        "--model",
        "routed",
        "--model_args",
        model_args,
        "--include_path",
        str(root / "tasks"),
        "--output_path",
        str(out),
        "--log_samples",
        "--limit",
        "3",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def logged(out: Path, kind: str, task: str) -> list[dict]:
    (path,) = out.rglob(f"{kind}_{task}_2*.jsonl")  # the date: not a longer task name
    return [json.loads(line) for line in path.read_text().splitlines()]


def inst(kind: str, args: tuple, doc_id: int, idx: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx, metadata=("t", doc_id, 1))


# -- 1. data parallelism: padding copies leave no record ---------------------------------------


def test_padding_copies_take_their_answer_and_leave_no_record(pair, tokenizer):
    cfg = load_config({"router": "random", "p": "0.5", "cost_slm": "0:0", "cost_llm": "0:0"})
    lm = RoutedLM.from_runtime(build_runtime(cfg, slm=pair[0], llm=pair[1], tokenizer=tokenizer))
    lm._world_size = 2  # as on a rank of two: lm-eval pads with copies of the last request
    a = inst("generate_until", ("Q: 1+1\nA:", {"until": ["\n"], "max_gen_toks": 6}), doc_id=0)
    b = inst("generate_until", ("Q: 2+2\nA:", {"until": ["\n"], "max_gen_toks": 6}), doc_id=1)
    lm.begin_routed_evaluation()
    texts = lm.generate_until([a, b, b, b], disable_tqdm=True)
    assert texts[2] == texts[3] == texts[1]
    choices = [inst("loglikelihood", ("Q: 1+1\nA:", f" {c}"), 0, idx=c) for c in (0, 1)]
    scores = lm.loglikelihood([*choices, choices[1]], disable_tqdm=True)
    assert scores[2] == scores[1] != scores[0]
    (rolled, again) = lm.loglikelihood_rolling([inst("loglikelihood_rolling", ("1+1=2",), 2)] * 2)
    assert rolled == again
    keys = [(r["key"]["doc_id"], r["key"]["idx"], r["key"]["repeat"]) for r in lm._evaluation]
    assert keys == [(0, 0, 0), (1, 0, 0), (0, 0, 0), (0, 1, 0), (2, 0, 0)]


@pytest.mark.slow
def test_uneven_two_rank_run_matches_a_single_process(workspace, tmp_path, monkeypatch):
    """Three docs over two ranks: rank 1 is padded; both runs log the same records, once each."""
    args = ",".join(f"{k}={v}" for k, v in pair_args(workspace, router="random", p="0.5").items())
    tasks = ("--tasks", "tiny_routed,tiny_routed_mc", "--batch_size", "2")
    cli(workspace, tmp_path / "one", args, *tasks)
    with socket.socket() as free:  # a port of its own: other runs may use accelerate's default
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    accelerate = str(Path(sys.executable).parent / "accelerate")
    launcher = [accelerate, "launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", port, "-m"]
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # two ranks on the CPU (gloo); `--cpu`: one
    stderr = cli(workspace, tmp_path / "two", args, *tasks, launcher=launcher)
    assert "on rank 1" in stderr  # lm-eval built requests on a second rank

    for task, per_doc in (("tiny_routed", 1), ("tiny_routed_mc", 2)):
        runs = {}
        for run in ("one", "two"):
            samples = sorted(logged(tmp_path / run, "samples", task), key=lambda s: s["doc_id"])
            assert [s["doc_id"] for s in samples] == [0, 1, 2]
            assert all(len(s["routed"]) == per_doc for s in samples), (run, samples)
            rows = logged(tmp_path / run, "routed", task)
            assert len(rows) == 3 * per_doc  # the JSONL beside: no padding row either
            runs[run] = [[{f: r[f] for f in SAME_EVERYWHERE} for r in s["routed"]] for s in samples]
        assert runs["one"] == runs["two"]


# -- 2. --seed reaches routed sampling ----------------------------------------------------------


def test_sampling_follows_lm_evals_seed_unless_seed_is_given(workspace):
    sampled = {"do_sample": True, "temperature": 3.0}

    def outputs(torch_seed: int, **more: str) -> tuple[list[str], dict]:
        results = evaluate(
            workspace,
            pair_args(workspace, router="random", p="0.5", **more),
            ["tiny_routed"],
            gen_kwargs=sampled,
            torch_random_seed=torch_seed,
        )
        texts = [s["resps"][0][0] for s in results["samples"]["tiny_routed"]]
        return texts, results["config"]["routed"]

    three, info = outputs(3)
    seven, _ = outputs(7)
    given, given_info = outputs(7, seed="3")  # seed= in model_args wins over lm-eval's
    assert three != seven
    assert given == three
    assert (info["seed"], info["seed_from"]) == (3, "lm_eval")
    assert (given_info["seed"], given_info["seed_from"]) == (3, "config")


# -- 3. --use_cache keeps the accounting --------------------------------------------------------


def test_cached_responses_keep_their_records(workspace, tmp_path, caplog):
    cache = str(tmp_path / "cache")
    tasks = ["tiny_routed", "tiny_routed_mc"]
    first = evaluate(
        workspace, pair_args(workspace, router="random", p="0.5"), tasks, use_cache=cache
    )
    again = evaluate(
        workspace, pair_args(workspace, router="random", p="0.5"), tasks, use_cache=cache
    )
    for task in tasks:
        live, cached = first["samples"][task], again["samples"][task]
        assert [s["resps"] for s in live] == [s["resps"] for s in cached]
        for before, after in zip(live, cached):
            assert before["routed"] and len(before["routed"]) == len(after["routed"])
            assert all(r["cached"] is False for r in before["routed"])
            assert [{**r, "cached": True} for r in before["routed"]] == after["routed"]

    # a cache that holds responses without their records: said once, and the samples carry none
    with sqlite3.connect(f"{cache}_rank0.db") as db:
        db.execute("DELETE FROM unnamed WHERE key LIKE 'routed-records:%'")
    with caplog.at_level(logging.WARNING, logger="lm_eval_routed"):
        bare = evaluate(
            workspace, pair_args(workspace, router="random", p="0.5"), tasks, use_cache=cache
        )
    said = [r for r in caplog.records if "without their accounting records" in r.getMessage()]
    assert len(said) == 1 and "9 responses" in said[0].getMessage()  # 3 generations + 6 choices
    assert all(s["routed"] == [] for task in tasks for s in bare["samples"][task])


# -- 4 and 5. lm-eval's log, lm-eval's output folders -------------------------------------------


@pytest.fixture(scope="module")
def two_cli_runs(workspace, tmp_path_factory):
    """Two configurations through the CLI into one output path; the first sets ``engine=hf``,
    asks for ``--batch_size auto`` and passes a generation kwarg routed ignores."""
    out = tmp_path_factory.mktemp("cli_out")
    first = ",".join(f"{k}={v}" for k, v in pair_args(workspace, router="random", p="0.5").items())
    stderr = cli(
        workspace,
        out,
        f"{first},engine=hf",
        *("--tasks", "tiny_routed", "--batch_size", "auto", "--verbosity", "DEBUG"),
        *("--gen_kwargs", "min_p=0.05"),
    )
    second = ",".join(f"{k}={v}" for k, v in pair_args(workspace, router="slm-only").items())
    cli(workspace, out, second, "--tasks", "tiny_routed", "--batch_size", "2")
    return out, stderr


@pytest.mark.slow
def test_log_lines_go_through_lm_evals_log_and_warn_once(two_cli_runs):
    _, stderr = two_cli_runs
    line = (
        r"^\d{4}-\d\d-\d\d:\d\d:\d\d:\d\d LEVEL +\[lm_eval_routed\.adapters\.lm_eval_model:\d+\] "
    )
    info = re.findall(line.replace("LEVEL", "INFO") + r"routed: batch_size=auto -> 8", stderr, re.M)
    ignored = re.findall(line.replace("LEVEL", "WARNING") + r".*\['min_p'\]", stderr, re.M)
    assert len(info) == 1, stderr[-3000:]
    assert len(ignored) == 1, stderr[-3000:]  # once per run, not once per request (3 here)
    assert stderr.count("routed ignores generation kwargs") == 1


@pytest.mark.slow
def test_each_configuration_gets_its_own_output_folder(two_cli_runs):
    out, _ = two_cli_runs
    folders = sorted(p.parent.name for p in out.rglob("results_*.json"))
    assert len(folders) == 2 and folders[0] != folders[1]
    random, slm_only = sorted(folders, key=lambda name: "slm-only" in name)
    assert random.startswith("routed__random_p=0.5__") and slm_only.startswith("routed__slm-only__")
    for folder in folders:
        files = {p.name.split("_20")[0] for p in (out / folder).iterdir()}
        assert files == {"results", "samples_tiny_routed", "routed_tiny_routed"}
        results = json.loads(next((out / folder).glob("results_*.json")).read_text())
        assert results["model_name"] == folder


def test_run_names_tell_configurations_apart():
    def name(**keys) -> str:
        lm = RoutedLM.__new__(RoutedLM)
        lm.cfg = RoutedConfig(**keys)
        return lm.run_name

    assert name(router="entropy", threshold=0.1).startswith("routed__entropy_t=0.1__")
    assert name(router="entropy", llm="a") != name(router="entropy", llm="b")
    assert name(router="random", name="my run") != name(router="random")
    assert name(batch_size=1, device="cpu") == name(batch_size=8)  # how fast, not what


# -- 6. simple_evaluate's samples carry the records ---------------------------------------------


def test_simple_evaluate_samples_carry_each_samples_records(workspace):
    tasks = ["tiny_routed", "tiny_routed_mc", "tiny_rolling"]
    results = evaluate(workspace, pair_args(workspace, router="random", p="0.5"), tasks)
    for task, n, scored_by in (
        ("tiny_routed", 1, "generate"),
        ("tiny_routed_mc", 2, "llm"),
        ("tiny_rolling", 1, "llm"),
    ):
        samples = results["samples"][task]
        assert len(samples) == 3
        for sample in samples:
            assert len(sample["routed"]) == n and "key" not in sample["routed"][0]
            assert {r["scored_by"] for r in sample["routed"]} == {scored_by}
    generated = [s["routed"][0] for s in results["samples"]["tiny_routed"]]
    assert all(r["tokens_slm"] + r["tokens_llm"] == r["tokens"] > 0 for r in generated)


# -- 7. rolling log-likelihoods equal lm-eval's hf ----------------------------------------------


def test_rolling_loglikelihood_equals_hf_under_prepack(workspace):
    wide = str(workspace / "wide")
    args = {"slm": wide, "llm": wide, "router": "llm-only", "cost_slm": "0:0", "cost_llm": "0:0"}
    ours = evaluate(workspace, args, ["tiny_rolling"], batch_size=1)
    theirs = evaluate(
        workspace,
        {"pretrained": wide, "dtype": "float32"},
        ["tiny_rolling"],
        model="hf",
        batch_size=1,
        device="cpu",
    )
    assert ours["config"]["routed"]["prepacked"] is True  # the default, and this CPU runs it
    got = [s["resps"][0][0] for s in ours["samples"]["tiny_rolling"]]
    want = [s["resps"][0][0] for s in theirs["samples"]["tiny_rolling"]]
    assert got == want  # bit for bit


# -- 8. routed llm-only scores what lm-eval's hf model scores --------------------------------------

GREEDY_TASK = """\
task: tiny_greedy
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: [".", "]"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_llm_only_scores_and_answers_as_lm_evals_hf_model(workspace, tmp_path):
    """Greedy generation and multiple choice: the same responses, sample by sample, and the same
    scores. The generation task's targets are the LLM's own greedy answers (transformers' generate,
    cut at the first stop string) for half the documents, so its score is not 0 by default; its stop
    strings (characters this LLM writes) cut most answers short."""
    llm = AutoModelForCausalLM.from_pretrained(workspace / "llm", dtype=torch.float32).eval()
    tok = char_tokenizer()
    docs = []
    for i, q in enumerate(["Q: 1+1\nA:", "The cat", "x", "Once upon a time"]):
        ids = torch.tensor([tok(q)["input_ids"]])
        out = llm.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=1)
        answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        answer = answer.split(".")[0].split("]")[0]  # the text ends before its first stop string
        docs.append({"q": q, "a": answer if i % 2 == 0 else answer + "#", "t": i % 2})
    (tmp_path / "tasks").mkdir()
    data = tmp_path / "greedy.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks" / "greedy.yaml").write_text(GREEDY_TASK.format(data=data))
    # multiple choice over the same questions, the right choice alternating between the two
    mc = MC_TASK.replace("tiny_routed_mc", "tiny_choice").replace(
        "doc_to_target: 0", "doc_to_target: t"
    )
    (tmp_path / "tasks" / "mc.yaml").write_text(mc.format(data=data))
    tasks = ["tiny_greedy", "tiny_choice"]
    args = pair_args(workspace, router="llm-only")
    ours = evaluate(tmp_path, args, tasks, limit=4, batch_size=2)
    theirs = evaluate(
        tmp_path,
        {"pretrained": str(workspace / "llm"), "dtype": "float32"},
        tasks,
        model="hf",
        limit=4,
        batch_size=1,
        device="cpu",
    )
    for task, metric in (("tiny_greedy", "exact_match,none"), ("tiny_choice", "acc,none")):
        got = [s["resps"] for s in ours["samples"][task]]
        want = [s["resps"] for s in theirs["samples"][task]]
        assert got == want, task  # texts, and log-likelihoods bit for bit
        assert ours["results"][task][metric] == theirs["results"][task][metric]
    assert [s["resps"][0][0] for s in ours["samples"]["tiny_greedy"]] == [
        d["a"] if i % 2 == 0 else d["a"][:-1] for i, d in enumerate(docs)
    ]
    assert ours["results"]["tiny_greedy"]["exact_match,none"] == 0.5
