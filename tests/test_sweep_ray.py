"""`sweep --launcher ray` on a local two-CPU Ray cluster: the same cells as the sequential launcher,
score for score and record for record; a worker killed mid-cell leaves no half cell, and the next run
scores only that cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_workspace

from lm_eval_routed.jobs import sweep
from lm_eval_routed.jobs.launch import Launcher, SweepIncomplete

pytestmark = pytest.mark.slow

CONFIGS = [{"router": "llm-only"}, {"router": "random", "p": 0.5}]
LABELS = ["llm-only", "random p=0.5"]
SLUGS = ["llm-only", "random_p=0.5"]  # their folders under OUT/runs/
TASK = "tiny_dies_once"
LIMIT = 2

# A task whose scoring kills its worker process once: after the cell's answers were generated and
# their records appended to accounting_path, before any of the cell's files is written. Which cell
# dies is whichever scores first: the unlink succeeds for one process only.
DIES_ONCE_YAML = """\
task: tiny_dies_once
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
process_results: !function dies_once.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

DIES_ONCE_PY = """\
import os
from pathlib import Path

MARKER = Path(__file__).with_name("die_once")


def process_results(doc, results):
    try:
        MARKER.unlink()
    except FileNotFoundError:
        pass
    else:
        os._exit(1)
    return {"exact_match": float(results[0].strip() == doc["a"])}
"""


@pytest.fixture(scope="module")
def ray_cluster():
    ray = __import__("ray")  # the [ray] extra: scripts/test.sh installs it
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = write_workspace(tmp_path_factory.mktemp("ray"))
    (ws / "tasks" / "dies_once.yaml").write_text(DIES_ONCE_YAML.format(data=ws / "data.jsonl"))
    (ws / "tasks" / "dies_once.py").write_text(DIES_ONCE_PY)
    return ws


def base(ws: Path, accounting: Path) -> dict:
    return {
        "slm": str(ws / "slm"),
        "llm": str(ws / "llm"),
        "cost_slm": "0:0",  # pinned: modeled latency does not hang on each process's measurement
        "cost_llm": "0:0",
        "batch_size": 1,
        "device": "cpu",
        "accounting_path": str(accounting),
    }


def run(ws: Path, out: Path, launcher: Launcher) -> list[dict]:
    return sweep.run_sweep(
        CONFIGS,
        [TASK],
        out,
        base=base(ws, out / "acc.jsonl"),
        limit=LIMIT,
        include_path=str(ws / "tasks"),
        launcher=launcher,
    )


@pytest.fixture(scope="module")
def reference(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    run(workspace, out, Launcher.SEQUENTIAL)
    return out


MEASURED = {"latency_s"}  # wall-clock time differs from run to run; everything else must not


def _summary(path: Path) -> dict:
    data = json.loads(path.read_text())
    data["accounting"] = {k: v for k, v in data["accounting"].items() if k not in MEASURED}
    return data


def _samples(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        line["routed"] = [{k: v for k, v in r.items() if k not in MEASURED} for r in line["routed"]]
    return lines


def _records(paths: list[Path]) -> dict[tuple, dict]:
    """Records by (cell, doc, request, repeat), measured times left out; a duplicate fails."""
    out: dict[tuple, dict] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            key = (rec["cell"], rec["doc_id"], rec["idx"], rec["repeat"])
            assert key not in out, f"record {key} is there twice"
            out[key] = {k: v for k, v in rec.items() if k not in MEASURED}
    return out


def _cells(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*/"))


def _same_cell(ray_out: Path, ref: Path, folder: str) -> None:
    mine, theirs = ray_out / "runs" / folder, ref / "runs" / folder
    assert _summary(mine / f"{TASK}.json") == _summary(theirs / f"{TASK}.json")
    assert _samples(mine / f"{TASK}.samples.jsonl") == _samples(theirs / f"{TASK}.samples.jsonl")


def test_the_ray_sweep_equals_the_sequential_one_and_a_killed_cell_is_rerun_alone(
    ray_cluster, workspace, reference, tmp_path
):
    """Two Ray runs: in the first, one cell's worker dies mid-cell and the other cell completes;
    the second scores the killed cell alone. Both cells then equal the sequential sweep's."""
    out = tmp_path / "ray"
    (workspace / "tasks" / "die_once").write_text("")
    with pytest.raises(SweepIncomplete) as err:
        run(workspace, out, Launcher.RAY)
    assert not (workspace / "tasks" / "die_once").exists()  # one worker did die
    (failure,) = err.value.failures
    assert "\n" not in str(err.value) and failure.cause.startswith("WorkerCrashedError: ")
    killed = failure.tag.removesuffix(f"/{TASK}")
    (survivor,) = set(SLUGS) - {killed}
    assert [s["label"] for s in err.value.summaries] == [LABELS[SLUGS.index(survivor)]]
    # nothing of the killed cell on disk but the records its worker appended before it died
    assert not list((out / "runs").glob(f"{killed}/*"))
    assert not list(out.rglob("*.tmp"))
    assert len(_records([out / f"acc.{killed}.{TASK}.jsonl"])) == LIMIT  # killed mid-cell
    kept = [*(out / "runs" / survivor).iterdir(), out / f"acc.{survivor}.{TASK}.jsonl"]
    finished = {p: p.stat().st_mtime_ns for p in kept}
    assert len(finished) == 3

    summaries = run(workspace, out, Launcher.RAY)  # the rerun: only the killed cell runs
    assert [s["label"] for s in summaries] == LABELS
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # the survivor left alone
    assert [p.name for p in _cells(out)] == SLUGS
    for folder in SLUGS:
        _same_cell(out, reference, folder)
    # each cell appended its records to a file of its own (none to the one file the matrix names),
    # the killed run's dropped before the cell ran again; together, the sequential run's file
    own = sorted(out.glob("acc.*.jsonl"))
    assert [p.name for p in own] == [f"acc.{slug}.{TASK}.jsonl" for slug in SLUGS]
    assert not (out / "acc.jsonl").exists()
    assert _records(own) == _records([reference / "acc.jsonl"])
    assert len(_records(own)) == len(CONFIGS) * LIMIT
