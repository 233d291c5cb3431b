"""Records join their samples under lm-eval's ``--samples`` (with several filters and repeated prompts),
and a sweep keeps every repeat's text beside its record."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lm_eval_routed.adapters.joins import records_by_sample
from lm_eval_routed.jobs import cell


def docs(prompts: list[str], repeats: int = 1) -> dict[int, list[dict]]:
    """Records as requests key them: doc id = position among the evaluated docs."""
    return {
        i: [
            {"tokens": 10 * i + r, "key": {"doc_id": i, "repeat": r, "prompt_hash": p}}
            for r in range(repeats)
        ]
        for i, p in enumerate(prompts)
    }


def tokens(samples: list[tuple[int, str]], records: dict) -> list[list[int]]:
    logged = [{"doc_id": d, "prompt_hash": p} for d, p in samples]
    return [[r["tokens"] for r in recs] for recs in records_by_sample(logged, records)]


def test_every_filter_of_a_picked_doc_gets_its_records():
    """--samples 4 7 9 on a task with two filters: lm-eval logs each doc twice."""
    records = docs(["hA", "hB", "hC"])
    logged = [(4, "hA"), (7, "hB"), (9, "hC")]
    assert tokens(logged + logged, records) == [[0], [10], [20]] * 2


def test_repeated_prompts_pair_in_order_under_several_filters():
    # dataset docs 1, 2, 4 picked; docs 1 and 4 share a prompt: positions 0 and 2
    records = docs(["hX", "hY", "hX"], repeats=2)
    logged = [(1, "hX"), (2, "hY"), (4, "hX")]
    assert tokens(logged * 2, records) == [[0, 1], [10, 11], [20, 21]] * 2


def test_positions_stay_positions_when_some_docs_have_no_records():
    """Without --samples logged ids are positions; a doc served from a cache has no records."""
    records = docs(["hA", "hB", "hA", "hC"])
    del records[1]
    logged = [(0, "hA"), (1, "hB"), (2, "hA"), (3, "hC")]
    assert tokens(logged, records) == [[0], [], [20], [30]]


def test_a_sample_never_gets_records_of_another_prompt():
    records = docs(["hA", "hB"])
    assert tokens([(5, "hZ"), (6, "hB")], records) == [[], [10]]


def test_sweep_lines_keep_every_repeats_text_beside_its_record():
    recs = [
        {
            "tokens": t,
            "scored_by": "generate",
            "key": {"doc_id": 0, "repeat": r, "prompt_hash": "h"},
        }
        for r, t in ((1, 7), (0, 5))
    ]
    sample = {
        "doc_id": 0,
        "prompt_hash": "h",
        "filter": "none",
        "target": "4",
        "resps": [[" four", " 4"]],
        "filtered_resps": [" four"],
        "exact_match": 0.0,
    }
    (line,) = cell.join_samples([sample], recs)
    assert line["responses"] == [" four", " 4"] and [r["tokens"] for r in line["routed"]] == [5, 7]
    assert line["target"] == "4" and line["filter"] == "none" and line["response"] == " four"


FILTERED_TASK = """\
task: tiny_filters
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_target: "{{{{a}}}}"
repeats: 2
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: true
  temperature: 1.0
filter_list:
  - name: first
    filter:
      - function: take_first
  - name: lower
    filter:
      - function: lowercase
      - function: take_first
metric_list:
  - metric: exact_match
"""


@pytest.mark.slow
def test_samples_flag_with_filters_repeats_and_repeated_prompts(tmp_path, make_runtime):
    """lm-eval's own evaluation with --samples: every logged sample, under both filters, carries
    its doc's two repeats, and our JSONL rows name lm-eval's doc ids with the sample's prompt."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_routed.adapters.lm_eval_model import RoutedLM
    from lm_eval_routed.adapters.lm_eval_records import write_jsonl

    data = tmp_path / "data.jsonl"
    questions = ["1+1", "2+2", "1+1", "3+3", "2+2", "4+4"]  # docs 1 and 4 share a prompt
    data.write_text("".join(json.dumps({"q": q, "a": "x"}) + "\n" for q in questions))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.yaml").write_text(FILTERED_TASK.format(data=data))
    lm = RoutedLM.from_runtime(make_runtime(router="random", p=0.5, batch_size=2))
    picked = [1, 2, 4]
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=["tiny_filters"],
        samples={"tiny_filters": picked},
        log_samples=True,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
    )
    samples = results["samples"]["tiny_filters"]
    tracker = SimpleNamespace(
        output_path=str(tmp_path / "out"),
        general_config_tracker=SimpleNamespace(model_name_sanitized="m"),
        date_id="d",
    )
    write_jsonl(tracker, "tiny_filters", samples)  # simple_evaluate attached the records
    assert sorted((s["doc_id"], s["filter"]) for s in samples) == sorted(
        (d, f) for d in picked for f in ("first", "lower")
    )
    assert all(len(s["routed"]) == 2 for s in samples)
    prompt_of = {s["doc_id"]: s["prompt_hash"] for s in samples}
    rows = [json.loads(x) for x in (tmp_path / "out" / "m" / "routed_tiny_filters_d.jsonl").open()]
    assert sorted((r["doc_id"], r["repeat"]) for r in rows) == [
        (d, r) for d in picked for r in (0, 1)
    ]
    assert all(r["prompt_hash"] == prompt_of[r["doc_id"]] for r in rows)
    # each logged sample's first response is the text its first record's tokens made
    for s in samples:
        if s["filter"] == "first":
            assert [len(r["token_offsets"]) - 1 for r in s["routed"]] == [
                r["tokens"] for r in s["routed"]
            ]
            assert [r["token_offsets"][-1] for r in s["routed"]] == [len(t) for t in s["resps"][0]]
