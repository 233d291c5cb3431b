"""Task data under ROUTED_TASKS_DATA: every bad file is one line naming the file, the line and the
field, raised while the task builds (before a model generates anything), never a traceback or a row
quietly scored 0."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import zlib

import pytest
from helpers import tree

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.evals.task_data import load_jsonl
from lm_eval_routed.paths import tasks_dir


def task_utils(name: str):
    path = tasks_dir() / name / "utils.py"
    spec = importlib.util.spec_from_file_location(f"{name}_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AIME = {"problem": "What is 20 + 22?", "answer": "42"}
GPQA = {
    "Question": "Which one?",
    "Correct Answer": "right",
    "Incorrect Answer 1": "w1",
    "Incorrect Answer 2": "w2",
    "Incorrect Answer 3": "w3",
}
LCB = {
    "question_content": "Print the sum of two integers.",
    "question_id": "q1",
    "contest_date": "2024-09-01T00:00:00",
    "starter_code": "",
    "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
    "private_test_cases": "[]",
    "metadata": "{}",
}
LOADERS = {
    "aime24": ("aime", "load_aime24"),
    "aime25": ("aime", "load_aime25"),
    "gpqa_diamond": ("gpqa", "load_gpqa_diamond"),
    "livecodebench": ("livecodebench", "load_livecodebench"),
}


def write(folder, name: str, lines: list) -> str:
    """Write ``lines`` (dicts as JSON, strings verbatim) to ``folder/name.jsonl``; return its path."""
    path = folder / f"{name}.jsonl"
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return str(path)


def refused(monkeypatch, folder, name: str, **window) -> str:
    """The one line loading task ``name`` from ``folder`` gets; the folder is left as it was."""
    monkeypatch.setenv("ROUTED_TASKS_DATA", str(folder))
    task, loader = LOADERS[name]
    before = tree(folder)
    with pytest.raises(ConfigError) as err:
        getattr(task_utils(task), loader)(**window)
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text, text
    assert tree(folder) == before
    return text


def _lcb(**changes):
    row = {**LCB, **changes}
    return {k: v for k, v in row.items() if v is not None}


def _packed(data: bytes) -> str:
    """A private-test blob the hub's way: base64(zlib(...)), here around bytes that are not tests."""
    return base64.b64encode(zlib.compress(data)).decode()


@pytest.mark.parametrize(
    "name,lines,needle",
    [
        ("aime24", [AIME, '{"problem": "1+1", "answer": '], "line 2 is not valid JSON"),
        ("aime24", [AIME, "[1, 2]"], "line 2 is a JSON list, not an object"),
        ("aime25", ['"just text"'], "line 1 is a JSON str, not an object"),
        ("aime24", [], "holds no rows; write one JSON object per line"),
        ("aime24", ["", "   "], "holds no rows"),
        ("aime24", [AIME, {"problem": "1+1"}], "line 2: field 'answer' or 'Answer' is missing"),
        ("aime24", [AIME, {"problem": "1+1", "answer": None}], "line 2: field 'answer' or"),
        ("aime24", [{"question": "1+1", "answer": "2"}], "line 1: field 'problem' or 'Problem'"),
        ("aime24", [AIME, {"Problem": "x", "answer": "2"}], "line 2: field 'Problem' is spelled"),
        ("aime24", [AIME, {**AIME, "hint": "x"}], "line 2: field 'hint' is not on line 1"),
        ("aime24", [AIME, {"problem": 7, "answer": "2"}], "line 2: field 'problem' is a int"),
        ("aime24", [AIME, {**AIME, "answer": ["42"]}], "line 2: field 'answer' is ['42'], not an"),
        (
            "aime24",
            [{**AIME, "id": 1}, {**AIME, "id": [1]}],
            "line 2: field 'id' is a list but a number",
        ),
        ("aime24", [AIME, {**AIME, "answer": 4}], "line 2: field 'answer' is a number but a str"),
        ("gpqa_diamond", [GPQA, {**GPQA, "Correct Answer": None}], "field 'Correct Answer' is"),
        ("gpqa_diamond", [{k: v for k, v in GPQA.items() if k != "Correct Answer"}], "'Correct An"),
        ("gpqa_diamond", [GPQA, {**GPQA, "Correct Answer": " "}], "must be non-empty text"),
        (
            "gpqa_diamond",
            [GPQA, {**{k: v for k, v in GPQA.items() if k != "Question"}, "question": "?"}],
            "line 2: field 'question' is spelled 'Question' on line 1",
        ),
        ("livecodebench", [_lcb(question_content=None)], "field 'question_content' is missing"),
        ("livecodebench", [_lcb(private_test_cases=_packed(b"not a pickle"))], "'private_test"),
        ("livecodebench", [_lcb(private_test_cases=_packed(b"\x80\x04N."))], "something other"),
        ("livecodebench", [_lcb(private_test_cases="eJzLSM3JyQcABiwCFQ")], "does not decode"),
        ("livecodebench", [_lcb(private_test_cases="%%% not base64")], "does not decode to tests"),
        ("livecodebench", [_lcb(public_test_cases='[{"input": "1"}]')], "'public_test_cases' does"),
        ("livecodebench", [_lcb(public_test_cases="[]")], "the problem has no tests"),
        (
            "livecodebench",
            [
                _lcb(
                    public_test_cases=json.dumps(
                        [{"input": "1", "output": "2", "testtype": "functional"}]
                    )
                )
            ],
            "field 'metadata' names no func_name",
        ),
        ("livecodebench", [_lcb(metadata="{oops")], "field 'metadata' is not a JSON object"),
        # a field missing or malformed is named as such, before the contest window selects rows
        (
            "livecodebench",
            [LCB, _lcb(contest_date=None)],
            "line 2: field 'contest_date' is missing",
        ),
        (
            "livecodebench",
            [_lcb(contest_date="01/09/2024")],
            "line 1: field 'contest_date' is '01/09/2024', not an ISO date (YYYY-MM-DD",
        ),
        (
            "livecodebench",
            [_lcb(contest_date="2024-13-01")],
            "field 'contest_date' is '2024-13-01'",
        ),
        (
            "livecodebench",
            [LCB, _lcb(contest_date=20240901)],
            "line 2: field 'contest_date' is a n",
        ),
        (
            "livecodebench",
            [_lcb(public_test_cases="[{oops")],
            "'public_test_cases' does not decode",
        ),
        ("livecodebench", [_lcb(public_test_cases='{"a": 1}')], "'public_test_cases' does not dec"),
        ("livecodebench", [_lcb(metadata="[1]")], "field 'metadata' is not a JSON object"),
        ("livecodebench", [_lcb(metadata='{"func_name": 3}')], "metadata' has func_name=3; give"),
        ("livecodebench", [_lcb(question_content=" ")], "'question_content' must be non-empty t"),
        ("livecodebench", [_lcb(starter_code=["x"])], "field 'starter_code' is a list, not text"),
        (
            "livecodebench",
            [_lcb(public_test_cases=None, private_test_cases=None)],
            "the problem has no tests",
        ),
        ("aime24", [AIME, {**AIME, "answer": "1/2"}], "line 2: field 'answer' is '1/2', not an i"),
        ("aime24", [{**AIME, "answer": 4.5}], "line 1: field 'answer' is 4.5, not an integer"),
        ("aime25", [{**AIME, "answer": True}], "field 'answer' is True, not an integer"),
        ("aime25", [{"Problem": "1+1", "Answer": "two"}], "field 'Answer' is 'two', not an int"),
        ("aime25", [{"problem": "1+1", "answer": ""}], "field 'answer' is '', not an integer"),
        ("gpqa_diamond", [{**GPQA, "Incorrect Answer 2": 7}], "'Incorrect Answer 2' must be non-"),
        ("gpqa_diamond", [GPQA, {**GPQA, "Question": ["?"]}], "line 2: field 'Question' must be"),
    ],
)
def test_bad_task_data_is_one_line_naming_file_line_and_field(
    tmp_path, monkeypatch, name, lines, needle
):
    path = write(tmp_path, name, lines)
    text = refused(monkeypatch, tmp_path, name)
    assert needle in text and path in text, text


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_missing_empty_folder_or_binary_file(tmp_path, monkeypatch, name):
    path = tmp_path / f"{name}.jsonl"
    assert f"ROUTED_TASKS_DATA={tmp_path} but {name}.jsonl is not there; add it or unset" in (
        refused(monkeypatch, tmp_path, name)
    )
    path.write_text("")
    assert (
        refused(monkeypatch, tmp_path, name)
        == f"{path} holds no rows; write one JSON object per line"
    )
    path.write_bytes(b'{"problem": "\xff", "answer": "1"}\n')
    assert f"{path} is not UTF-8 text (byte 13)" in refused(monkeypatch, tmp_path, name)
    path.unlink()
    path.mkdir()
    assert refused(monkeypatch, tmp_path, name).startswith(f"{path} is a folder; ROUTED_TASKS_DATA")
    elsewhere = tmp_path / "no_such_folder"
    assert refused(monkeypatch, elsewhere, name).startswith(
        f"ROUTED_TASKS_DATA={elsewhere} is not a folder; point it at the folder holding"
    )


@pytest.mark.parametrize(
    "window,needle",
    [
        ({"start_date": "2024/08/01"}, "start_date='2024/08/01' is not an ISO day (YYYY-MM-DD)"),
        ({"end_date": "soon"}, "end_date='soon' is not an ISO day"),
        (
            {"start_date": "2025-01-01", "end_date": "2024-01-01"},
            "start_date=2025-01-01 is after end_date=2024-01-01",
        ),
    ],
)
def test_a_window_that_is_not_one(tmp_path, monkeypatch, window, needle):
    write(tmp_path, "livecodebench", [LCB])
    assert needle in refused(monkeypatch, tmp_path, "livecodebench", **window)


def test_livecodebench_checks_every_row_of_a_file_before_the_window(tmp_path, monkeypatch):
    # a broken problem outside the contest window is named, not silently dropped by the window
    old = _lcb(question_id="q0", contest_date="2023-01-01", private_test_cases="%%%")
    path = write(tmp_path, "livecodebench", [LCB, old])
    text = refused(monkeypatch, tmp_path, "livecodebench")
    assert text.startswith(f"{path} line 2: field 'private_test_cases' does not decode"), text


def test_livecodebench_hub_rows_are_decoded_only_in_the_window(monkeypatch):
    """The hub's problems outside the window are never decoded (their private tests run to
    gigabytes), but every row's contest_date must still parse."""
    import datasets

    old = _lcb(question_id="q0", contest_date="2023-01-01", private_test_cases="%%%")
    rows = [old, LCB]
    monkeypatch.delenv("ROUTED_TASKS_DATA", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    lcb = task_utils("livecodebench")
    assert [d["question_id"] for d in lcb.load_livecodebench()["test"]] == ["q1"]
    rows = [_lcb(contest_date="01/09/2024"), LCB]
    with pytest.raises(ConfigError) as err:
        lcb.load_livecodebench()
    assert str(err.value).startswith(
        "lighteval/code_generation_lite row 0: field 'contest_date' is '01/09/2024', not an ISO"
    ), err.value


def test_good_files_load_with_every_row(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTED_TASKS_DATA", str(tmp_path))
    write(tmp_path, "aime24", ["", {**AIME, "answer": 42}, {"problem": "2+2", "answer": 4.0}, ""])
    rows = list(task_utils("aime").load_aime24()["test"])
    assert [r["problem"] for r in rows] == ["What is 20 + 22?", "2+2"]
    write(tmp_path, "gpqa_diamond", [GPQA, GPQA])
    assert len(task_utils("gpqa").load_gpqa_diamond()["test"]) == 2


def test_the_committed_demo_data_passes_its_own_checks():
    rows = load_jsonl(tasks_dir() / "demo" / "demo.jsonl", columns=("kind", "question", "answer"))
    assert len(rows["test"]) == 60


DEMO = {"id": 99, "kind": "capital", "question": "Peru", "answer": "Lima"}
COT = {"id": 99, "question": "Sam has 2 red cups and 3 blue cups. ...", "answer": 5}


@pytest.mark.parametrize(
    "loader,line,needle",
    [
        ("load_demo", {**DEMO, "kind": "riddle"}, "line 1: field 'kind' is 'riddle'; use one of"),
        ("load_demo", {**DEMO, "kind": ["capital"]}, "field 'kind' is ['capital']; use one of"),
        ("load_demo", {**DEMO, "answer": 3}, "line 1: field 'answer' must be non-empty text, n"),
        ("load_demo", {**DEMO, "question": ""}, "field 'question' must be non-empty text"),
        ("load_demo", {"id": 1, "kind": "capital"}, "field 'question' is missing or null"),
        (
            "load_demo_cot",
            {**COT, "answer": "5"},
            "line 1: field 'answer' is '5'; give the integer",
        ),
        ("load_demo_cot", {**COT, "answer": 5.5}, "field 'answer' is 5.5; give the integer"),
        ("load_demo_cot", {**COT, "question": 12}, "field 'question' must be non-empty text"),
    ],
)
def test_demo_rows_are_checked(tmp_path, monkeypatch, loader, line, needle):
    utils = task_utils("demo")
    name = "demo.jsonl" if loader == "load_demo" else "demo_cot.jsonl"
    path = tmp_path / name
    path.write_text(json.dumps(line) + "\n")
    monkeypatch.setattr(utils, "__file__", str(path))
    with pytest.raises(ConfigError) as err:
        getattr(utils, loader)()
    assert str(err.value).startswith(f"{path} line 1: ") and needle in str(err.value), err.value


@pytest.mark.slow  # a fresh interpreter indexes every lm-eval task
def test_lm_eval_task_build_lets_our_one_line_through(tmp_path, monkeypatch):
    """lm-eval builds the task (and so loads our data) without wrapping our error in its own."""
    from lm_eval.tasks import TaskManager, get_task_dict

    write(tmp_path, "gpqa_diamond", [GPQA, {**GPQA, "Question": None}])
    monkeypatch.setenv("ROUTED_TASKS_DATA", str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"gpqa_diamond.jsonl line 2: field 'Question' is missing"
    ):
        get_task_dict(["routed_gpqa_diamond"], TaskManager())


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("ROUTED_SANDBOX_TIMEOUT", "abc", "ROUTED_SANDBOX_TIMEOUT='abc' is not a float"),
        ("ROUTED_SANDBOX_TIMEOUT", "nan", "ROUTED_SANDBOX_TIMEOUT:"),
        ("ROUTED_SANDBOX_TIMEOUT", "-1", "ROUTED_SANDBOX_TIMEOUT:"),
        ("ROUTED_SANDBOX_WORKERS", "two", "ROUTED_SANDBOX_WORKERS='two' is not a int"),
        ("ROUTED_SANDBOX_WORKERS", "-2", "ROUTED_SANDBOX_WORKERS=-2 must be 0"),
    ],
)
def test_sandbox_settings_from_the_environment_are_one_line(monkeypatch, name, value, says):
    lcb = task_utils("livecodebench")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(says)):
        lcb.execute([["```python\nprint(1)\n```"]], [{"public_test_cases": "[]"}])
