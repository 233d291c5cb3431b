"""routed_demo_cot: worked answers score by their extracted result; the data is the script's, held out."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest

from lm_eval_routed.paths import tasks_dir

DEMO = tasks_dir() / "demo"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"demo_cot_{name}", DEMO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = _module("utils")
make = _module("make_cot_data")
ROWS = [json.loads(line) for line in (DEMO / "demo_cot.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "text,answer",
    [
        ("Answer: 12", 12),
        ("answer:12.", 12),
        ("ANSWER :  12 balls.", 12),
        ("Answer: **12**", 12),
        ("Answer: 1,234", 1234),
        ("Answer: -3", -3),
        ("Answer: 13\n\nProblem: more", 13),
        ("so 4 + 3 = 7.\nAnswer: 7\nAnswer: 8", 7),  # the first answer counts, not a later one
        ("Answer: 1234, as shown", 1234),
        ("Answer: 3.5", None),  # not an integer
        ("Answer: 12,5", None),
        ("Answer: twelve", None),
        ("Answer:", None),
        ("The total is 12 balls.", None),  # a number but no answer line
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert utils.extract_answer(text) == answer


def test_a_known_right_answer_scores_one_and_a_wrong_one_zero():
    doc = {"question": "q", "answer": 15}
    right = (
        "Leo starts with 9 big coins and 4 small coins.\n"
        "Leo finds 2 more big coins, so Leo has 9 + 2 = 11 big coins.\n"
        "In total Leo has 11 big coins and 4 small coins, which is 11 + 4 = 15 coins.\n"
        "Answer: 15"
    )
    assert utils.cot_process_results(doc, [right]) == {"exact_match": 1.0}
    # the right number in the working but a wrong final answer: wrong
    assert utils.cot_process_results(doc, [right.replace("Answer: 15", "Answer: 16")]) == {
        "exact_match": 0.0
    }
    # the right number with no answer line: no answer, not a lucky match
    assert utils.cot_process_results(doc, [right.replace("Answer: 15", "")]) == {"exact_match": 0.0}
    assert utils.cot_process_results({"answer": "15"}, ["Answer: 15"]) == {"exact_match": 1.0}


def test_every_reference_solution_is_right_by_its_own_arithmetic():
    step = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")
    for row in ROWS:
        assert utils.cot_process_results(row, [row["solution"]]) == {"exact_match": 1.0}
        steps = step.findall(row["solution"])
        assert len(steps) in (2, 3)
        for a, op, b, c in steps:
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    for steps, shots in utils.COT_SHOTS.items():
        for question, solution in shots:
            assert utils.cot_steps({"question": question}) == steps
            assert len(step.findall(solution)) == steps
            assert utils.extract_answer(solution) == int(step.findall(solution)[-1][3])


def test_the_committed_data_is_the_scripts_and_held_out():
    assert make.build() == ROWS  # make_cot_data.py rewrites the same file
    questions = [r["question"] for r in ROWS]
    assert len(set(questions)) == len(questions) == make.N_QUESTIONS
    shots = {q for pairs in utils.COT_SHOTS.values() for q, _ in pairs}
    assert not shots & set(questions)
    train = make.training_rows(300)
    assert len({r["question"] for r in train}) == 300
    assert not {r["question"] for r in train} & (set(questions) | shots)
    # both shapes of problem are asked, and the prompt shows both
    assert 0.25 < sum("loses" in q for q in questions) / len(questions) < 0.75
    for row in ROWS:  # two worked examples of the problem's own shape, then the problem
        prompt = utils.cot_doc_to_text(row)
        name = row["question"].split()[0]
        assert prompt.endswith(f"Problem: {row['question']}\nSolution:\n{name} starts with")
        assert row["solution"].startswith(f"{name} starts with ")
        assert prompt.count("\nAnswer: ") == 2
        assert prompt.count(" loses ") == (2 * 2 + 1 if "loses" in row["question"] else 0)


def test_lm_eval_loads_the_task_and_scores_through_its_yaml():
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict(["routed_demo_cot"], TaskManager(include_path=str(tasks_dir())))[
        "routed_demo_cot"
    ]
    docs = list(task.test_docs())
    assert len(docs) == make.N_QUESTIONS
    assert task.doc_to_text(docs[0]) == utils.cot_doc_to_text(docs[0])
    assert task.process_results(docs[0], [docs[0]["solution"]]) == {"exact_match": 1.0}
    assert task.process_results(docs[0], ["Answer: 0"]) == {"exact_match": 0.0}
    kwargs = task.config.generation_kwargs
    assert kwargs["until"] == ["\n\n", "Problem:"] and kwargs["do_sample"] is False
    sys.modules.pop("utils", None)


@pytest.mark.parametrize(
    "line,named",
    [
        ('{"question": "q", "answer": "12"}', "answer"),  # a string, not the integer
        ('{"question": "q", "answer": true}', "answer"),
        ('{"question": "q"}', "answer"),
        ('{"answer": 3}', "question"),
    ],
)
def test_a_bad_row_is_one_line_naming_its_field(tmp_path, line, named):
    from lm_eval_routed.errors import ConfigError
    from lm_eval_routed.evals.task_data import load_jsonl

    path = tmp_path / "demo_cot.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=rf"line 1.*{named}") as err:
        load_jsonl(path, columns=("question", "answer"), check_row=utils._check_cot_row)
    assert "\n" not in str(err.value)
