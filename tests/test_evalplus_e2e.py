"""`evalplus.evaluate --backend routed` end to end on a two-problem HumanEval-format file, offline."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import char_tokenizer, tiny_llama, tree, write_workspace

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


CHAT = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny pair (plus an LLM whose tokenizer has a chat template), its YAML and the problem file."""
    root = tmp_path_factory.mktemp("evalplus")
    ws = write_workspace(root / "ws")
    tok = char_tokenizer()
    tok.chat_template = CHAT
    tiny_llama(2, seed=2).save_pretrained(ws / "llm_chat")
    tok.save_pretrained(ws / "llm_chat")
    data = root / "HumanEvalPlus.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    common = "router: random\np: 0.5\ncost_slm: [0.001, 0.0001]\ncost_llm: [0.01, 0.001]\n"
    for name, llm in (("pair", "llm"), ("chat", "llm_chat")):
        (root / f"{name}.yaml").write_text(
            f"slm: {ws / 'slm'}\nllm: {ws / llm}\n{common}max_gen_toks: 24\n"
        )
    return root


@pytest.fixture
def offline(setup, monkeypatch):
    """Point EvalPlus's HumanEval+ loader at the two-problem file (it never downloads then)."""
    import evalplus.data.humaneval as humaneval

    monkeypatch.setattr(humaneval, "HUMANEVAL_OVERRIDE_PATH", str(setup / "HumanEvalPlus.jsonl"))
    monkeypatch.delenv("ROUTED_MODEL_ARGS", raising=False)
    return setup


def decoder(cfg: Path, **kwargs):
    from lm_eval_routed.adapters.evalplus_backend import RoutedDecoder

    return RoutedDecoder(
        name=str(cfg),
        dataset="humaneval",
        instruction_prefix="Solve:",
        response_prefix="Here:",
        **kwargs,
    )


def one_task_loop(target_path, model, dataset, **_):
    """Stands in for EvalPlus's codegen loop: one greedy sample of the first problem."""
    return model.codegen(PROBLEMS[0]["prompt"].strip() + "\n", do_sample=False, num_samples=1)


@pytest.mark.slow
def test_evaluate_writes_results_and_accounting(setup, tmp_path):
    env = {
        **os.environ,
        "HUMANEVAL_OVERRIDE_PATH": str(setup / "HumanEvalPlus.jsonl"),
        "ROUTED_MODEL_ARGS": "seed=7",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    cmd = [
        str(Path(sys.executable).parent / "evalplus.evaluate"),
        "--model",
        str(setup / "pair.yaml"),
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
    assert info["config"]["max_gen_toks"] == 24


def test_direct_completion_stops_without_touching_evalplus_eos(offline):
    from evalplus.provider.utility import EOS, extra_eos_for_direct_completion

    before = list(EOS)
    model = decoder(offline / "pair.yaml")
    assert model.is_direct_completion() and model.max_new_tokens == 24
    assert model.eos == before + extra_eos_for_direct_completion("humaneval")
    again = decoder(offline / "pair.yaml")  # must not see the first decoder's stops twice
    assert again.eos == model.eos
    assert before == EOS


def test_chat_template_wraps_the_prompt(offline, monkeypatch):
    model = decoder(offline / "chat.yaml", batch_size=2)
    assert not model.is_direct_completion() and model.eos[-1] == "\n```\n"
    assert model.runtime.cfg.batch_size == 2
    seen = []
    encode = model.runtime.encode
    monkeypatch.setattr(
        model.runtime, "encode", lambda text, n: seen.append(text) or encode(text, n)
    )
    assert len(model.codegen("def f():\n", do_sample=False, num_samples=2)) == 2
    assert seen[0].startswith("<user>Solve:") and "<assistant>Here:" in seen[0]
    assert (
        model.force_base_prompt is False
        and decoder(offline / "chat.yaml", force_base_prompt=True).is_direct_completion()
    )


def test_resume_continues_sample_index_and_refuses_other_settings(offline, tmp_path, monkeypatch):
    from lm_eval_routed.adapters.evalplus_backend import wrap_codegen

    target = tmp_path / "humaneval" / "pair_routed_temp_0.0.jsonl"
    target.parent.mkdir()
    target.write_text(json.dumps({"task_id": "HumanEval/0", "solution": "x"}) + "\n")
    model = decoder(offline / "pair.yaml")
    wrap_codegen(one_task_loop)(str(target), model, dataset="humaneval")
    (rec,) = [json.loads(x) for x in target.with_suffix(".routed.jsonl").read_text().splitlines()]
    assert (rec["task_id"], rec["sample"]) == ("HumanEval/0", 1)  # sample 0 was already there

    monkeypatch.setenv("ROUTED_MODEL_ARGS", "p=0.25")
    with pytest.raises(SystemExit, match="other settings \\(p\\)"):
        wrap_codegen(one_task_loop)(
            str(target), decoder(offline / "pair.yaml"), dataset="humaneval"
        )
    monkeypatch.setenv("ROUTED_MODEL_ARGS", "batch_size=3")  # how fast, not what: allowed
    wrap_codegen(one_task_loop)(str(target), decoder(offline / "pair.yaml"), dataset="humaneval")


def test_bad_override_is_one_line(offline, monkeypatch):
    import evalplus.provider as provider

    monkeypatch.setenv("ROUTED_MODEL_ARGS", "p=2")
    with pytest.raises(SystemExit, match="^evalplus --backend routed: p=2.0 is out of range"):
        provider.make_model(model=str(offline / "pair.yaml"), backend="routed", dataset="humaneval")


def test_other_backends_still_dispatch_to_evalplus():
    import evalplus.codegen
    import evalplus.provider as provider

    # EvalPlus answers an unknown backend with None; the wrapper must hand it through untouched
    assert provider.make_model(model="x", backend="no-such-backend", dataset="humaneval") is None
    assert provider.make_model.__wrapped__.__module__ == "evalplus.provider"
    assert evalplus.codegen.codegen.__wrapped__.__module__ == "evalplus.codegen"


def test_changed_settings_are_refused_before_any_model_loads(offline, tmp_path, monkeypatch):
    import evalplus.codegen

    from lm_eval_routed.adapters import evalplus_backend

    run = functools.partial(
        evalplus.codegen.run_codegen,
        model=str(offline / "pair.yaml"),
        backend="routed",
        dataset="humaneval",
        root=str(tmp_path),
        greedy=True,
    )
    target = Path(run())  # a first run writes samples and the settings they were made under
    assert len(target.read_text().splitlines()) == 2

    class Loaded(Exception):
        pass

    def load(cfg):
        raise Loaded

    monkeypatch.setattr(evalplus_backend, "build_runtime", load)
    monkeypatch.setenv("ROUTED_MODEL_ARGS", "p=0.25")
    with pytest.raises(SystemExit, match="other settings \\(p\\)"):
        run()
    monkeypatch.setenv("ROUTED_MODEL_ARGS", "batch_size=3")  # how fast, not what: goes on to load
    with pytest.raises(Loaded):
        run()
    monkeypatch.setenv("ROUTED_MODEL_ARGS", "p=0.25")
    with pytest.raises(SystemExit, match="other settings \\(p\\)"):
        run(resume=False)  # EvalPlus appends to the file all the same


# -- a problem file handed in through HUMANEVAL_OVERRIDE_PATH, broken ------------------------------

ONE = PROBLEMS[0]


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "HUMANEVAL_OVERRIDE_PATH={path} does not exist; fix the path or unset"),
        ("folder", "HUMANEVAL_OVERRIDE_PATH={path} is a folder; give the problems' JSONL file"),
        ("", "{path} holds no rows; write one JSON object per line"),
        (b"\xff\xfe", "{path} is not UTF-8 text (byte 0)"),
        ('{"task_id": "HumanEval/0",\n', "{path} line 1 is not valid JSON"),
        ([ONE, [1]], "{path} line 2 is a JSON list, not an object"),
        ([{k: v for k, v in ONE.items() if k != "prompt"}], "line 1: field 'prompt' is missing"),
        ([ONE, {**ONE, "task_id": "HumanEval/1", "entry_point": None}], "line 2: field 'entry_po"),
        ([{**ONE, "base_input": "[[1]]"}], "{path} line 1: field 'base_input' is '[[1]]', not a l"),
        ([{**ONE, "atol": "0"}], "line 1: field 'atol' is '0', not a number"),
        ([{**ONE, "atol": True}], "line 1: field 'atol' is True, not a number"),
        ([{**ONE, "task_id": 0}], "line 1: field 'task_id' is 0, not text"),
        ([ONE, ONE], "{path} line 2: field 'task_id' 'HumanEval/0' is on line 1 too"),
    ],
)
def test_a_broken_problem_file_is_one_line_before_any_model_loads(
    tmp_path, monkeypatch, no_loading, content, needle
):
    import evalplus.codegen
    import evalplus.data.humaneval as humaneval

    from lm_eval_routed.adapters import evalplus_backend

    path = tmp_path / "HumanEvalPlus.jsonl"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, list):
        path.write_text("".join(json.dumps(row) + "\n" for row in content))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    monkeypatch.setattr(humaneval, "HUMANEVAL_OVERRIDE_PATH", str(path))
    monkeypatch.setattr(evalplus_backend, "build_runtime", lambda cfg: pytest.fail("loaded"))
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as done:
        evalplus.codegen.run_codegen(
            model="demo", backend="routed", dataset="humaneval", root=str(tmp_path / "out")
        )
    text = str(done.value.code)
    assert text.startswith("evalplus --backend routed: ") and "\n" not in text, text
    assert needle.format(path=path) in text, text
    assert tree(tmp_path) == before  # EvalPlus's output folders are not made


def test_the_decoder_checks_the_problem_file_too(tmp_path, monkeypatch, no_loading):
    import evalplus.data.humaneval as humaneval
    import evalplus.provider as provider

    monkeypatch.setattr(humaneval, "HUMANEVAL_OVERRIDE_PATH", str(tmp_path / "none.jsonl"))
    with pytest.raises(SystemExit, match="^evalplus --backend routed: HUMANEVAL_OVERRIDE_PATH="):
        provider.make_model(model="demo", backend="routed", dataset="humaneval")


def test_a_sound_problem_file_passes_gzipped_or_not(setup, tmp_path):
    import gzip

    from lm_eval_routed.adapters.evalplus_data import check_problem_file

    check_problem_file(setup / "HumanEvalPlus.jsonl", "HUMANEVAL_OVERRIDE_PATH")
    packed = tmp_path / "HumanEvalPlus.jsonl.gz"
    packed.write_bytes(gzip.compress((setup / "HumanEvalPlus.jsonl").read_bytes()))
    check_problem_file(packed, "HUMANEVAL_OVERRIDE_PATH")


@pytest.mark.slow  # a fresh interpreter imports EvalPlus and torch
def test_evalplus_cli_refuses_a_missing_problem_file_in_one_line(tmp_path):
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(tmp_path / "HumanEvalPlus.jsonl")}
    cmd = [str(Path(sys.executable).parent / "evalplus.codegen"), "--model", "demo"]
    cmd += ["--backend", "routed", "--dataset", "humaneval", "--root", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"evalplus --backend routed: HUMANEVAL_OVERRIDE_PATH={tmp_path / 'HumanEvalPlus.jsonl'} "
        "does not exist; fix the path or unset HUMANEVAL_OVERRIDE_PATH"
    )
    assert not (tmp_path / "out").exists()
