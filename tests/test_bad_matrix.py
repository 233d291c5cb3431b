"""A sweep matrix, broken the ways people break it: the file itself (missing, a folder, empty, not
YAML, keys missing or of the wrong type) and every path it names (include_path, task YAMLs, config
files, router checkpoints, model paths, accounting_path, the output folder). Each gets one line from
`lm-eval-routed sweep` and exit status 2, before lm-eval indexes a task or any model loads, with
nothing on disk changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import tree

from lm_eval_routed.cli import main
from lm_eval_routed.jobs import cell as cellmod
from lm_eval_routed.jobs.matrix import preflight_matrix
from lm_eval_routed.paths import router_ckpts_dir

OK = "configs: [{router: llm-only}]\ntasks: [routed_demo]\n"
TASKS = "tasks: [routed_demo]\n"


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A folder of the things a matrix may name, well made and broken, and nothing past the
    pre-flight: lm-eval's task index and the model loader both fail the test if reached."""
    (tmp_path / "my_tasks").mkdir()
    (tmp_path / "my_tasks" / "mine.yaml").write_text("task: mine\n")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("not a folder\n")
    (tmp_path / "not_task.yaml").write_text("dataset_path: x\n")
    (tmp_path / "bad.yaml").write_text("router: [entropy\n")
    (tmp_path / "empty.yaml").write_text("")
    shutil.copytree(router_ckpts_dir() / "demo-r2r", tmp_path / "broken-r2r")
    (tmp_path / "broken-r2r" / "model.safetensors").write_bytes(b"\0" * 64)

    import lm_eval.tasks

    def past(*a, **k):
        raise AssertionError("the sweep got past its pre-flight")

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", past)
    monkeypatch.setattr(cellmod, "build_runtime", past)
    monkeypatch.chdir(tmp_path)  # relative paths in a matrix are the user's working folder's
    return tmp_path


# (matrix file content, or None: no file; the line it gets); {d} is the fixture's folder
CASES = {
    # the file itself
    "no_file": (None, "matrix file '{d}/m.yaml' does not exist"),
    "empty": ("", "{d}/m.yaml is empty; write configs: and tasks: in it"),
    "not_utf8": (b"configs: [\xff]\n", "matrix file {d}/m.yaml is not UTF-8 text (byte 10)"),
    "bad_yaml": ("configs: [{router: llm-only}\ntasks: [t]\n", "is not valid YAML at line 2"),
    "a_list": ("- configs\n", "{d}/m.yaml must hold a mapping with configs: and tasks:"),
    "no_configs": (TASKS, "{d}/m.yaml: configs: must be a list of model_args mappings"),
    "no_tasks": ("configs: [{router: llm-only}]\n", "tasks: must list at least one lm-eval task"),
    "configs_text": ("configs: llm-only\n" + TASKS, "configs: must be a list of model_args"),
    "tasks_number": ("configs: [{}]\ntasks: 5\n", "tasks: must list at least one lm-eval task"),
    "task_mapping": (
        "configs: [{}]\ntasks: [routed_demo, {name: x}]\n",
        "tasks: item 2 is {'name': 'x'}, not a task name or a task YAML's path",
    ),
    "base_list": (OK + "base: [1]\n", "base: must be a mapping of model_args"),
    "include_list": (OK + "include_path: [a, b]\n", "include_path: is ['a', 'b']; give one folder"),
    "metric_number": (OK + "metric: 3\n", "metric: is 3; give one metric name"),
    "unknown_key": (OK + "models: x\n", "{d}/m.yaml: unknown key 'models'; allowed: base,"),
    # the configurations' values
    "threshold_text": (
        "configs: [{router: entropy, threshold: high}]\n" + TASKS,
        "{d}/m.yaml: configs #1: threshold='high' is not a valid float",
    ),
    "base_value": (
        "base: {threshold: high}\nconfigs: [{router: entropy}]\n" + TASKS,
        "{d}/m.yaml: base: threshold='high' is not a valid float",
    ),
    "router_typo": (
        "configs: [{router: llm-only}, {router: entrpy}]\n" + TASKS,
        "{d}/m.yaml: configs #2: unknown router 'entrpy'",
    ),
    # the paths it names
    "include_missing": (
        OK + "include_path: {d}/no_such_dir\n",
        "{d}/m.yaml: include_path '{d}/no_such_dir' does not exist; give a folder of task YAMLs",
    ),
    "include_file": (OK + "include_path: notes.txt\n", "include_path 'notes.txt' is a file, not"),
    "include_empty": (OK + "include_path: empty_dir\n", "'empty_dir' holds no .yaml file"),
    "task_missing": (
        "configs: [{}]\ntasks: [routed_demo, my_tasks/mne.yaml]\n",
        "{d}/m.yaml: tasks: 'my_tasks/mne.yaml' does not exist (a path to a task YAML)",
    ),
    "task_folder": ("configs: [{}]\ntasks: [my_tasks/]\n", "tasks: 'my_tasks/' is a folder; put"),
    "task_not_task": ("configs: [{}]\ntasks: [not_task.yaml]\n", "names no task: (or group:)"),
    "task_bad_yaml": ("configs: [{}]\ntasks: [bad.yaml]\n", "'bad.yaml' is not a readable task"),
    "config_missing": (
        "configs: [{router: llm-only}, {config: my/run.yaml}]\n" + TASKS,
        "{d}/m.yaml: configs #2: config='my/run.yaml': no such file; fix the path",
    ),
    "config_folder": ("configs: [{config: empty_dir}]\n" + TASKS, "config='empty_dir' is a folder"),
    "config_empty": (
        "configs: [{config: empty.yaml}]\n" + TASKS,
        "config file empty.yaml is empty",
    ),
    "config_bad": ("configs: [{config: bad.yaml}]\n" + TASKS, "config file bad.yaml is not valid"),
    "ckpt_missing": (
        "configs: [{router: llm-only}, {router: r2r, router_ckpt: no_ckpt}]\n" + TASKS,
        "{d}/m.yaml: configs #2 (r2r): router_ckpt='no_ckpt' not found",
    ),
    "ckpt_empty_dir": (
        "configs: [{router: r2r, router_ckpt: empty_dir}]\n" + TASKS,
        "configs #1 (r2r): empty_dir has no config.json",
    ),
    "ckpt_damaged": (  # the second configuration's checkpoint, before the first one's models load
        "configs: [{router: llm-only}, {router: r2r, router_ckpt: broken-r2r}]\n" + TASKS,
        "configs #2 (r2r): broken-r2r/model.safetensors is not a readable safetensors file",
    ),
    "ckpt_in_base": (
        "base: {router: r2r, router_ckpt: no_ckpt}\nconfigs: [{threshold: 0.5}]\n" + TASKS,
        "{d}/m.yaml: base (r2r t=0.5): router_ckpt='no_ckpt' not found",
    ),
    "slm_missing": (
        "configs: [{slm: ./no_such_model}]\n" + TASKS,
        "configs #1 (slm-only): slm='./no_such_model' does not exist",
    ),
    "accounting_folder": (
        "configs: [{accounting_path: empty_dir}]\n" + TASKS,
        "accounting_path 'empty_dir' is a folder; give a file path inside it",
    ),
    "latency_model_missing": (
        "configs: [{router: llm-only}, {latency_model: no_latency.json}]\n" + TASKS,
        "configs #2 (slm-only): latency model no_latency.json: no such file",
    ),
    "latency_model_bad": (
        "configs: [{latency_model: empty.yaml}]\n" + TASKS,
        "configs #1 (slm-only): latency model empty.yaml is not valid JSON",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_matrix_is_one_line_before_anything_runs(place, capsys, case):
    content, needle = CASES[case]
    matrix = place / "m.yaml"
    if isinstance(content, bytes):
        matrix.write_bytes(content)
    elif content is not None:
        matrix.write_text(content.replace("{d}", str(place)))
    _refused(place, [str(matrix), "--out", str(place / "out")], needle, capsys)


@pytest.mark.parametrize(
    "out,needle",
    [
        ("notes.txt", "output folder 'notes.txt' is a file; give a folder"),
        ("notes.txt/run", "output folder 'notes.txt/run' cannot be made: 'notes.txt' is a file"),
    ],
)
def test_an_output_folder_that_cannot_be_made(place, capsys, out, needle):
    (place / "m.yaml").write_text(OK)
    _refused(place, ["m.yaml", "--out", out], needle, capsys)


def test_a_matrix_given_as_a_folder(place, capsys):
    _refused(place, ["my_tasks"], "matrix file 'my_tasks' is a folder; give the YAML file", capsys)


def _refused(place, args: list[str], needle: str, capsys) -> None:
    before = tree(place)
    assert main(["sweep", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("lm-eval-routed sweep: ") and needle.replace("{d}", str(place)) in err, (
        err
    )
    assert tree(place) == before


def test_a_sound_matrix_passes_its_preflight(place):
    shutil.copytree(router_ckpts_dir() / "demo-r2r", place / "r2r")
    configs = [{"router": "llm-only"}, {"router": "r2r", "router_ckpt": "r2r", "threshold": 0.5}]
    tasks = ["routed_demo", "my_tasks/mine.yaml"]
    before = tree(place)
    cfgs = preflight_matrix(configs, tasks, place / "new" / "out", include_path="my_tasks")
    assert [c.label for c in cfgs] == ["llm-only", "r2r t=0.5"]
    assert tree(place) == before  # the output folder is made when the first cell is written


@pytest.mark.slow  # a fresh interpreter imports torch
def test_sweep_command_refuses_a_missing_include_path(tmp_path):
    """The reported case: a missing include_path ran anyway, on the default index, exit status 0."""
    (tmp_path / "m.yaml").write_text(OK + "include_path: my_taks/\n")
    before = tree(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "lm_eval_routed.cli", "sweep", "m.yaml"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr == (
        "lm-eval-routed sweep: m.yaml: include_path 'my_taks/' does not exist; give a folder of "
        "task YAMLs or drop include_path\n"
    )
    assert tree(tmp_path) == before
