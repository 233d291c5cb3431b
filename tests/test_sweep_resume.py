"""Nothing a sweep computed is lost, and nothing is counted twice: cells are written atomically, a
half-written one is scored again, a killed cell's records leave ``accounting_path`` before it reruns,
and a matrix that would score one cell twice is refused before any model loads."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import write_workspace

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic
from lm_eval_routed.jobs import cell as cellmod
from lm_eval_routed.jobs import sweep
from lm_eval_routed.jobs.leaderboard import build_rows, to_markdown
from lm_eval_routed.jobs.summaries import config_dict

PINNED = {"cost_slm": "0:0", "cost_llm": "0:0"}


@pytest.fixture
def no_models(monkeypatch):
    monkeypatch.setattr(cellmod, "build_runtime", lambda *a, **k: pytest.fail("models loaded"))


@pytest.mark.parametrize(
    "configs,tasks,needle",
    [
        ([{"router": "llm-only"}, {"router": "llm-only"}], ["t"], "'llm-only' is listed twice"),
        (
            [{"router": "random", "p": 0.2}, {"router": "random", "p": 0.2, "name": "rand"}],
            ["t"],
            "configurations 'random p=0.2' and 'rand' differ only in their name",
        ),
        (
            [{"router": "entropy", "threshold": 0.1}, {"router": "entropy", "threshold": "0.1"}],
            ["t"],
            "'entropy t=0.1' is listed twice",
        ),
        (
            [{"router": "llm-only"}],
            ["t", "u", "t"],
            "task 't' is listed twice; list each task once",
        ),
    ],
)
def test_a_matrix_scoring_one_cell_twice_is_refused_before_loading(
    tmp_path, no_models, configs, tasks, needle
):
    with pytest.raises(ConfigError) as err:
        sweep.run_sweep(configs, tasks, tmp_path, base=PINNED)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


class FakeTasks:
    all_tasks = ["t"]

    def __init__(self, include_path=None):
        pass


def _fake_cell(calls):
    def run(cell, runtime, out, limit, task_manager):
        calls.append(cell.cfg.label)
        summary = {
            "label": cell.cfg.label,
            "task": cell.task,
            "config": config_dict(cell.cfg),
            "metrics": {"exact_match,none": 1.0},
            "n_samples": 1,
            "limit": limit,
            "accounting": {},
        }
        sweep.cell_path(out, cell).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(sweep.cell_path(out, cell), json.dumps(summary))

    return run


@pytest.mark.parametrize(
    "left",
    ['{"label": "llm-only", "task": "t", "con', "", "[1, 2]", '{"label": "llm-only"}', "\xff"],
)
def test_a_half_written_cell_is_scored_again(tmp_path, monkeypatch, left):
    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", FakeTasks)
    monkeypatch.setattr(sweep, "runtime_for", lambda cfg, shared: None)
    calls: list[str] = []
    monkeypatch.setattr(sweep, "run_cell", _fake_cell(calls))
    path = tmp_path / "runs" / "llm-only" / "t.json"
    path.parent.mkdir(parents=True)
    path.write_text(left)
    summaries = sweep.run_sweep([{"router": "llm-only"}], ["t"], tmp_path, base=PINNED)
    assert calls == ["llm-only"] and summaries[0]["metrics"] == {"exact_match,none": 1.0}
    sweep.run_sweep([{"router": "llm-only"}], ["t"], tmp_path, base=PINNED)
    assert calls == ["llm-only"]  # now whole: kept


def test_write_atomic_leaves_the_old_file_or_the_new(tmp_path, monkeypatch):
    path = tmp_path / "cell.json"
    write_atomic(path, "old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        write_atomic(path, "new" * 1000)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["cell.json"]


def test_drop_records_removes_the_cells_own_and_a_torn_line(tmp_path):
    path = tmp_path / "acc.jsonl"
    mine = {"cell": "a/t", "config": "a", "doc_id": 0}
    other = {"cell": "b/t", "config": "b", "doc_id": 0}
    lines = [json.dumps(other), json.dumps(mine), "not json, someone else's", json.dumps(mine)]
    path.write_text("\n".join(lines) + "\n" + '{"cell": "a/t", "doc_')
    cellmod.drop_records(path, "a/t")
    assert path.read_text() == json.dumps(other) + "\nnot json, someone else's\n"
    before = path.read_bytes()
    cellmod.drop_records(path, "c/t")  # nothing of c's: the file is left as it is
    assert path.read_bytes() == before
    cellmod.drop_records(tmp_path / "absent.jsonl", "a/t")


def test_a_pinned_zero_cost_does_not_crash_the_leaderboard():
    zero = {"llm_share": 0.5, "activated_params": 1e6, "modeled_latency_s": 0.0}
    summaries = [
        {
            "label": label,
            "task": "t",
            "config": {"router": label},
            "metrics": {"exact_match,none": 0.5},
            "accounting": {**zero, "latency_s": latency},
            "n_samples": 2,
        }
        for label, latency in (("llm-only", 0.1), ("slm-only", 0.025))
    ]
    rows = {r["config"]: r for r in build_rows(summaries)}
    assert all(r["modeled_speedup_vs_llm_only"] is None for r in rows.values())
    # the measured speed-up still stands: llm-only's latency over the row's
    assert rows["slm-only"]["speedup_vs_llm_only"] == pytest.approx(0.1 / 0.025)
    assert rows["llm-only"]["speedup_vs_llm_only"] == pytest.approx(1.0)
    assert "| - |" in to_markdown(list(rows.values()))


def test_accounting_records_say_which_configuration_wrote_them(make_runtime, tmp_path):
    from lm_eval.api.instance import Instance

    from lm_eval_routed.adapters.lm_eval_model import RoutedLM

    path = tmp_path / "acc.jsonl"
    lm = RoutedLM.from_runtime(make_runtime(router="random", p="0.5", accounting_path=str(path)))
    req = Instance("generate_until", {}, ("Q: 1+1\nA:", {"max_gen_toks": 3}), 0, ("t", 0, 1))
    lm.generate_until([req, req], disable_tqdm=True)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2 and {r["config"] for r in records} == {"random p=0.5"}


# -- a real sweep, killed with SIGKILL at several points, resumes to the same results -------------


def _matrix(ws: Path, accounting: Path) -> dict:
    return {
        "base": {
            "slm": str(ws / "slm"),
            "llm": str(ws / "llm"),
            **PINNED,  # zero costs: repeatable schedules, and a leaderboard with no modeled speed-up
            "batch_size": 1,
            "accounting_path": str(accounting),
        },
        "configs": [{"router": "llm-only"}, {"router": "random", "p": 0.5}, {"router": "slm-only"}],
        "tasks": ["tiny_routed"],
        "include_path": str(ws / "tasks"),
    }


def _sweep_process(matrix: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lm_eval_routed.cli", "sweep", str(matrix), "--out", str(out)]
    return subprocess.Popen(
        [*cmd, "--limit", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _kill_when(proc: subprocess.Popen, ready, limit_s: float = 240) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False when it ended first."""
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < limit_s:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait(timeout=limit_s)
    return False


# measured wall-clock time differs from run to run; everything else must not
MEASURED = {"latency_s", "speedup_vs_llm_only"}


def _board(out: Path) -> list[dict]:
    with (out / "leaderboard.csv").open() as fh:
        return [{k: v for k, v in row.items() if k not in MEASURED} for row in csv.DictReader(fh)]


def _records(path: Path) -> dict[tuple, dict]:
    """Records by (cell, doc, request, repeat), with measured times left out; duplicates fail."""
    out: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        key = (rec["cell"], rec["doc_id"], rec["idx"], rec["repeat"])
        assert key not in out, f"record {key} is in {path.name} twice"
        out[key] = {k: v for k, v in rec.items() if k != "latency_s"}
    return out


@pytest.mark.slow
def test_a_sweep_killed_at_random_points_resumes_to_the_same_leaderboard(tmp_path):
    ws = write_workspace(tmp_path / "ws")
    ref_acc, acc = tmp_path / "ref.jsonl", tmp_path / "acc.jsonl"
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(_matrix(ws, ref_acc)))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(_matrix(ws, acc)))
    out = tmp_path / "out"
    runs = out / "runs"
    # a fresh seed each run explores other kill points; every failure names it, to replay them
    seed = int(os.environ.get("ROUTED_KILL_SEED") or random.SystemRandom().randrange(2**32))
    draw = random.Random(seed)
    replay = f"replay with ROUTED_KILL_SEED={seed}"
    cells = lambda: len(list(runs.rglob("*.json"))) if runs.is_dir() else 0  # noqa: E731
    # Each run is killed a random moment after an event, judged against what it found on disk at
    # its start (n records, c finished cells): a record of the first cell (0-0.05 s after, so the
    # kill lands mid-cell); a cell marked done; a record of a later cell (after the records of the
    # cells killed before were dropped).
    events = [
        ("a record", 0.05, lambda n, c: _lines(acc) > n),
        ("a cell marked done", 0.2, lambda n, c: cells() > c),
        ("a record of a later cell", 0.2, lambda n, c: cells() > c and _lines(acc) > 4 * cells()),
    ]
    killed, mid_cell = [], 0
    for name, longest, event in events:
        n, c, pause, since = _lines(acc), cells(), draw.uniform(0.0, longest), []

        def ready() -> bool:
            if not since and event(n, c):  # noqa: B023  (called before the next turn)
                since.append(time.monotonic())  # noqa: B023
            return bool(since) and time.monotonic() - since[0] >= pause  # noqa: B023

        proc = _sweep_process(tmp_path / "m.yaml", out)
        if _kill_when(proc, ready):
            killed.append(f"{pause:.2f} s after {name}: {cells()} cells, {_lines(acc)} records")
            mid_cell += _lines(acc) > 4 * cells()  # records of an unfinished cell on disk
        else:
            assert proc.returncode == 0, f"{replay}\n{proc.stderr.read()[-3000:]}"
    assert len(killed) >= 2 and mid_cell >= 1, (replay, killed)
    done = _sweep_process(tmp_path / "m.yaml", out)
    assert done.wait(timeout=300) == 0, f"{replay}\n{done.stderr.read()[-3000:]}"
    ref = _sweep_process(tmp_path / "ref.yaml", tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-3000:]

    assert _board(out) == _board(tmp_path / "ref"), (replay, killed)
    # each record once, as an unbroken run wrote it
    assert _records(acc) == _records(ref_acc), (replay, killed)
    assert len(_records(acc)) == 3 * 4, replay
    assert not [p for p in out.rglob("*.tmp")], replay
    print(f"kill seed {seed}; killed:", *killed, sep="\n  ")  # shown with -rA


def test_write_atomic_clears_what_a_killed_writer_left(tmp_path):
    path = tmp_path / "t.json"
    (tmp_path / ".t.json.4242.tmp").write_text('{"half')
    (tmp_path / ".other.json.4242.tmp").write_text("another file's")
    write_atomic(path, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.4242.tmp", "t.json"]
