"""`lm-eval-routed diff`: paired statistics checked by hand, joins, refusals, formats, scale."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from helpers import require
from run_fixtures import (
    P_LLM,
    P_SLM,
    Sample,
    write_evalplus,
    write_lm_eval,
    write_sweep_cell,
)

from lm_eval_routed import cli
from lm_eval_routed.jobs import stats
from lm_eval_routed.jobs.stats import mcnemar_exact, paired_bootstrap

# -- statistics on fixed data with known answers ---------------------------------------------------


@pytest.mark.parametrize(
    "lost,gained,want",
    [
        (0, 0, 1.0),  # no discordant pair
        (3, 3, 1.0),  # balanced: capped at 1
        (0, 5, 2 / 32),  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
        (1, 6, 2 * (1 + 7) / 128),
        (9, 1, 2 * (1 + 10) / 1024),
        (2, 8, 2 * (1 + 10 + 45) / 1024),
    ],
)
def test_mcnemar_exact_matches_the_binomial_sum_by_hand(lost, gained, want):
    assert mcnemar_exact(lost, gained) == pytest.approx(want, rel=1e-15)


def test_mcnemar_agrees_with_scipy_and_survives_thousands_of_pairs():
    scipy_stats = require("scipy.stats")
    for lost, gained in [(4, 11), (30, 52), (3000, 3100), (0, 1200)]:
        want = scipy_stats.binomtest(lost, lost + gained, 0.5).pvalue
        assert mcnemar_exact(lost, gained) == pytest.approx(want, rel=1e-9, abs=1e-300)
    assert 0.0 < mcnemar_exact(3000, 3100) < 1.0  # no underflow to 0 or overflow at n = 6100


def reference_bootstrap(d: list[float], resamples: int, seed: int, level: float = 0.95):
    """The paired bootstrap written out one resample at a time, with numpy's linear percentile."""
    rng = np.random.default_rng(seed)
    n = len(d)
    means = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        means.append(sum(d[i] for i in idx) / n)
    means.sort()

    def percentile(q: float) -> float:
        h = (len(means) - 1) * q
        lo = math.floor(h)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (h - lo) * (means[hi] - means[lo])

    tail = (1 - level) / 2
    return sum(d) / n, percentile(tail), percentile(1 - tail)


def test_bootstrap_equals_a_direct_reimplementation(monkeypatch):
    d = [-1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, -1.0, 1.0, 0.5, 0.25]
    want = reference_bootstrap(d, resamples=2000, seed=7)
    (got,) = paired_bootstrap(np.array([d]), resamples=2000, seed=7)
    assert (got.mean, got.low, got.high) == pytest.approx(want, abs=1e-12)
    monkeypatch.setattr(stats, "_CHUNK", 3 * len(d))  # many small chunks: the same draws
    (again,) = paired_bootstrap(np.array([d]), resamples=2000, seed=7)
    assert (again.mean, again.low, again.high) == pytest.approx(want, abs=1e-12)
    # a second quantity resampled alongside gets the same documents: its interval is unchanged
    doubled = paired_bootstrap(np.array([d, [2 * x for x in d]]), resamples=2000, seed=7)
    assert doubled[0] == got
    assert (doubled[1].low, doubled[1].high) == pytest.approx((2 * got.low, 2 * got.high))


def test_bootstrap_degenerate_cases():
    (same,) = paired_bootstrap(np.full((1, 50), 0.25), resamples=500)
    assert (same.mean, same.low, same.high) == pytest.approx((0.25, 0.25, 0.25))
    # within-task resampling: a task of all 0s beside a task of all 1s always averages 3/5
    strata = np.array([[0.0, 0.0, 1.0, 1.0, 1.0]])
    (fixed,) = paired_bootstrap(strata, strata=[2, 3], resamples=500)
    assert (fixed.low, fixed.high) == pytest.approx((0.6, 0.6))
    (free,) = paired_bootstrap(strata, resamples=500)
    assert free.low < 0.6 < free.high
    # NaN marks a document without the quantity: it is left out, not counted as 0
    (gaps,) = paired_bootstrap(np.array([[1.0, np.nan, 1.0, np.nan]]), resamples=500)
    assert (gaps.mean, gaps.low, gaps.high) == pytest.approx((1.0, 1.0, 1.0))


def test_bootstrap_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    hits = 0
    for trial in range(200):
        d = rng.normal(0.3, 1.0, size=60)
        (ci,) = paired_bootstrap(d[None, :], resamples=400, seed=trial)
        hits += ci.low <= 0.3 <= ci.high
    assert 0.88 <= hits / 200 <= 0.99  # percentile intervals run slightly narrow at n = 60


# -- a hand-computed pair of runs ----------------------------------------------------------------------


def hand_runs(tmp_path):
    """12 paired docs: the baseline right on 0-5; the run loses doc 0 and gains docs 6-11.

    Baseline: the LLM writes both tokens of every answer. The run: the LLM writes the first only.
    Doc 12 is in the baseline only, doc 13 in the run only.
    """
    base = [Sample(i, 1.0 if i < 6 else 0.0, [" a", "b"], [0, 1]) for i in range(13)]
    run = [
        Sample(
            i,
            0.0 if i == 0 else 1.0,
            [" a", "b"] if i else [" a", "c"],
            [0],
            latency=0.05 + 0.01 * i,
        )
        for i in [*range(12), 13]
    ]
    a = write_lm_eval(tmp_path / "a", base, model_args="router=llm-only")
    b = write_lm_eval(tmp_path / "b", run, model_args="router=random,p=0.5")
    return a, b


def diff_json(capsys, *args) -> list[dict]:
    assert cli.main(["diff", *map(str, args), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_hand_computed_comparison(tmp_path, capsys):
    a, b = hand_runs(tmp_path)
    (report,) = diff_json(capsys, a, b, "--resamples", "2000", "--seed", "3")
    assert (report["base"], report["other"]) == ("llm-only", "random p=0.5")
    (task,) = report["tasks"]
    assert task["task"] == "t" and task["metric"] == "exact_match,none" and task["n"] == 12
    assert task["base"] == pytest.approx([0.5, math.sqrt(12 / 11 * 0.25) / math.sqrt(12)])
    assert task["other"][0] == pytest.approx(11 / 12)
    assert task["binary"] and task["lost"] == [0] and task["gained"] == [6, 7, 8, 9, 10, 11]
    assert task["p_value"] == pytest.approx(2 * (1 + 7) / 128)
    assert task["only_base"] == [12] and task["only_other"] == [13]
    diffs = [-1.0] + [0.0] * 5 + [1.0] * 6
    want = reference_bootstrap(diffs, resamples=2000, seed=3)
    assert [task["diff"][k] for k in ("mean", "low", "high")] == pytest.approx(want, abs=1e-12)
    deltas = {d["field"]: d for d in task["accounting"]}
    assert deltas["llm_share"]["base"] == 1.0 and deltas["llm_share"]["other"] == 0.5
    assert deltas["llm_share"]["diff"] == {"mean": -0.5, "low": -0.5, "high": -0.5}
    assert deltas["activated_params"]["diff"]["mean"] == pytest.approx((P_SLM - P_LLM) / 2)
    assert deltas["switches"]["diff"]["mean"] == 1.0  # llm -> slm once per answer
    latency = deltas["latency_s"]
    assert latency["n"] == 12 and latency["other"] == pytest.approx(0.05 + 0.01 * 5.5)
    assert latency["diff"]["low"] <= latency["diff"]["mean"] <= latency["diff"]["high"]
    assert "activated_params_nominal" not in deltas  # in neither run: not reported
    assert report["overall"] is None  # one task: the task is the overall


def test_table_shows_flips_cis_and_deltas(tmp_path, capsys):
    a, b = hand_runs(tmp_path)
    assert cli.main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "0.500 ± 0.151" in out and "0.917 ± 0.083" in out
    assert "+0.417 [" in out and "0.125" in out  # the difference with its CI; McNemar p
    assert "wrong in 'random p=0.5', right in the baseline: 0" in out
    assert "right in 'random p=0.5', wrong in the baseline: 6, 7, 8, 9, 10, 11" in out
    assert "only in 'llm-only': 12" in out and "only in 'random p=0.5': 13" in out
    assert "llm_share" in out and "-0.500 [-0.500, -0.500]" in out and "-45.0M" in out


def test_flips_list_the_first_divergence_and_who_wrote_it(tmp_path, capsys):
    a, b = hand_runs(tmp_path)
    (report,) = diff_json(capsys, a, b, "--flips")
    flips = {(s["doc_id"], s["repeat"]): s for s in report["samples"]}
    assert set(flips) == {(i, 0) for i in [0, *range(6, 12)]}
    doc0 = flips[(0, 0)]  # " ab" vs " ac": they part at character 2, token 1 in both
    assert doc0["char"] == 2 and doc0["tokens"] == [1, 1]
    assert doc0["writers"] == ["llm", "slm"] and doc0["common"] == " a"
    assert doc0["rest"] == ["b", "c"] and doc0["answers"] == [" ab", " ac"]
    assert doc0["scores"] == [1.0, 0.0]
    assert flips[(6, 0)]["char"] is None  # the same text, scored differently: said so
    (every,) = diff_json(capsys, a, b, "--samples")
    assert len(every["samples"]) == 12


def test_repeats_pair_per_problem_means_without_mcnemar(tmp_path, capsys):
    """pass@1 over repeats: each problem's mean is one paired observation, not a binary outcome."""
    base = [Sample(i, s, ["x"], [0], repeats=[(["y"], [])]) for i, s in enumerate([1, 0.5, 0])]
    run = [Sample(i, s, ["x"], [], repeats=[(["z"], [])]) for i, s in enumerate([0.5, 0.5, 1])]
    (report,) = diff_json(
        capsys,
        write_lm_eval(tmp_path / "a", base),
        write_lm_eval(tmp_path / "b", run),
        "--samples",
    )
    (task,) = report["tasks"]
    assert not task["binary"] and task["p_value"] is None
    assert task["lost"] == [0] and task["gained"] == [2]
    assert task["diff"]["mean"] == pytest.approx((-0.5 + 0 + 1) / 3)
    share = next(d for d in task["accounting"] if d["field"] == "llm_share")
    assert share["base"] == 0.5 and share["other"] == 0.0  # mean of each doc's two repeats
    assert [(s["doc_id"], s["repeat"], s["char"]) for s in report["samples"]] == [
        (d, r, c) for d in range(3) for r, c in ((0, None), (1, 0))
    ]


def test_different_prompts_are_refused_in_one_line(tmp_path, capsys):
    a = write_lm_eval(tmp_path / "a", [Sample(i, 1.0, ["x"]) for i in range(4)])
    other = [Sample(i, 1.0, ["x"], prompt="few-shot-5" if i >= 2 else "") for i in range(4)]
    b = write_lm_eval(tmp_path / "b", other)
    assert cli.main(["diff", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "t doc 2:" in err and "different prompts" in err


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.mkdir(), p)[1], "is not a run this tool reads"),
        (lambda p: (p.mkdir(), (p / "results_x.json").write_text("{"), p)[2], "not valid JSON"),
        (
            lambda p: (p.mkdir(), (p / "results_x.json").write_text("{}"), p)[2],
            "rerun lm_eval with --log_samples",
        ),
    ],
)
def test_unusable_inputs_are_one_line_and_exit_2(tmp_path, capsys, make, message):
    good = write_lm_eval(tmp_path / "good", [Sample(0, 1.0, ["x"])])
    bad = make(tmp_path / "bad")
    assert cli.main(["diff", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and err.startswith("lm-eval-routed diff:")


def test_a_broken_sample_line_names_the_file_and_line(tmp_path, capsys):
    a = write_lm_eval(tmp_path / "a", [Sample(0, 1.0, ["x"])])
    b = write_lm_eval(tmp_path / "b", [Sample(0, 1.0, ["x"]), Sample(1, 0.0, ["y"])])
    samples = next(b.rglob("samples_*.jsonl"))
    samples.write_text(samples.read_text()[:-20])  # cut off mid-line
    assert cli.main(["diff", str(a), str(b)]) == 2
    assert f"{samples.name}:2 is not valid JSON" in capsys.readouterr().err


def test_fail_if_bounds_and_bad_expressions(tmp_path, capsys):
    a, b = hand_runs(tmp_path)
    assert cli.main(["diff", str(b), str(a), "--fail-if", "score_drop>0.02"]) == 1
    assert "fail-if score_drop>0.02: 'llm-only' vs 'random p=0.5', t: score_drop = 0.417" in (
        capsys.readouterr().err
    )
    assert cli.main(["diff", str(a), str(b), "--fail-if", "score_drop>0.02"]) == 0
    assert cli.main(["diff", str(a), str(b), "--fail-if", "llm_share_delta<-0.4"]) == 1
    assert cli.main(["diff", str(a), str(b), "--fail-if", "lost>=1", "--fail-if", "lost>5"]) == 1
    capsys.readouterr()
    assert cli.main(["diff", str(a), str(b), "--fail-if", "accuracy>0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "score_drop, score_drop_upper" in err


def test_markdown_csv_and_out_file(tmp_path, capsys):
    a, b = hand_runs(tmp_path)
    out = tmp_path / "report" / "diff.md"
    assert cli.main(["diff", str(a), str(b), "--format", "md", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## random p=0.5 vs llm-only (baseline)")
    assert "| t | exact_match,none | 12 |" in text and "| llm_share | 12 |" in text
    assert cli.main(["diff", str(a), str(b), "--format", "csv", "--flips"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    score = next(r for r in rows if r["kind"] == "score")
    assert score["lost"] == "0" and score["gained"] == "6 7 8 9 10 11" and score["n"] == "12"
    assert float(score["p_value"]) == pytest.approx(0.125)
    assert {r["quantity"] for r in rows if r["kind"] == "accounting"} >= {"llm_share", "tokens"}
    assert len([r for r in rows if r["kind"] == "sample"]) == 7


def test_three_runs_each_against_the_first_and_labels(tmp_path, capsys):
    a, b = hand_runs(tmp_path)
    reports = diff_json(capsys, a, b, a, "--labels", "base,cand,again")
    assert [(r["base"], r["other"]) for r in reports] == [("base", "cand"), ("base", "again")]
    assert reports[1]["tasks"][0]["diff"]["mean"] == 0.0
    reports = diff_json(capsys, a, a)  # one run twice: its labels are told apart
    assert reports[0]["other"] == "llm-only #2"


def test_sweep_cells_and_lm_eval_folders_give_the_same_comparison(tmp_path, capsys):
    base = [Sample(i, float(i % 2), ["a", "b"], [i % 2]) for i in range(6)]
    run = [Sample(i, float(i % 3 == 0), ["a", "c"], [1]) for i in range(6)]
    from_lm_eval = diff_json(
        capsys, write_lm_eval(tmp_path / "a", base), write_lm_eval(tmp_path / "b", run)
    )
    cell_a = write_sweep_cell(tmp_path / "sa", base, label="llm-only")
    cell_b = write_sweep_cell(tmp_path / "sb", run, label="random p=0.5")
    from_cells = diff_json(capsys, cell_a, cell_b / "t.samples.jsonl")
    assert from_cells[0]["tasks"] == from_lm_eval[0]["tasks"]
    # the sweep's root holds several configurations: the user is told to pick one
    assert cli.main(["diff", str(tmp_path / "sa"), str(cell_b)]) == 2
    assert "give one cell folder" in capsys.readouterr().err


def test_records_from_the_routed_jsonl_when_the_sample_log_has_none(tmp_path, capsys):
    samples = [Sample(i, 1.0, ["a", "b"], [1]) for i in range(3)]
    with_key = diff_json(
        capsys, write_lm_eval(tmp_path / "a", samples), write_lm_eval(tmp_path / "b", samples)
    )
    without = diff_json(
        capsys,
        write_lm_eval(tmp_path / "c", samples, routed_key=False),
        write_lm_eval(tmp_path / "d", samples, routed_key=False),
    )
    assert with_key[0]["tasks"][0]["accounting"] == without[0]["tasks"][0]["accounting"] != []


def test_evalplus_runs_pair_by_task_id(tmp_path, capsys):
    base = write_evalplus(
        tmp_path / "a", {"HumanEval/0": [(True, True)], "HumanEval/1": [(True, False)]}
    )
    run = write_evalplus(
        tmp_path / "b", {"HumanEval/0": [(False, False)], "HumanEval/1": [(True, True)]}
    )
    (plus,) = diff_json(capsys, base, run, "--flips")
    (task,) = plus["tasks"]
    assert task["task"] == "humaneval" and task["metric"] == "pass@1,plus"
    assert task["lost"] == ["HumanEval/0"] and task["gained"] == ["HumanEval/1"]
    first = next(s for s in plus["samples"] if s["doc_id"] == "HumanEval/0")
    # the raw file holds prompt + completion: the record's offsets pick out the completion
    assert first["common"] == "    return " and first["rest"] == ["1\n", "0\n"]
    assert first["tokens"] == [1, 1] and first["writers"] == ["llm", "llm"]
    (base_only,) = diff_json(
        capsys, base, run.with_name(run.stem + "_eval_results.json"), "--metric", "base"
    )
    assert (
        base_only["tasks"][0]["lost"] == ["HumanEval/0"] and base_only["tasks"][0]["gained"] == []
    )


def test_thousands_of_samples_pair_every_flip(tmp_path, capsys):
    # its speed is scripts/bench_diff.py's to measure, on these same runs
    rng = np.random.default_rng(0)
    n = 5000
    right = rng.random(n) < 0.6
    base = [Sample(i, float(right[i]), [" t"] * 40, list(range(40))) for i in range(n)]
    flips = rng.random(n) < 0.1
    run = [
        Sample(i, float(right[i] ^ flips[i]), [" t"] * 40, list(range(0, 40, 3)), latency=0.05)
        for i in range(n)
    ]
    a, b = write_lm_eval(tmp_path / "a", base), write_lm_eval(tmp_path / "b", run)
    (report,) = diff_json(capsys, a, b, "--flips")
    (task,) = report["tasks"]
    assert task["n"] == n
    assert sorted(task["lost"]) == sorted(int(i) for i in np.flatnonzero(flips & right))
    assert sorted(task["gained"]) == sorted(int(i) for i in np.flatnonzero(flips & ~right))


def test_sweep_cells_written_before_lines_kept_every_text(tmp_path, capsys):
    """Older cell lines hold the extracted answer only: with one generation, it is the text."""
    cells = []
    for name, pieces in (("a", [" a", "b"]), ("b", [" a", "c"])):
        cell = write_sweep_cell(tmp_path / name, [Sample(0, float(name == "a"), pieces, [1])])
        lines = (cell / "t.samples.jsonl").read_text().splitlines()
        old = [
            {k: v for k, v in json.loads(x).items() if k not in ("responses", "filter")}
            for x in lines
        ]
        (cell / "t.samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in old))
        cells.append(cell)
    (report,) = diff_json(capsys, *cells, "--flips")
    (sample,) = report["samples"]
    assert (
        sample["char"] == 2 and sample["tokens"] == [1, 1] and sample["writers"] == ["llm", "llm"]
    )


def test_runs_priced_by_different_cost_models_get_a_note(tmp_path, capsys):
    samples = [Sample(i, 1.0, ["a"], [0]) for i in range(3)]
    measured = {"cost_model": {"slm": [0.01, 0.0], "llm": [0.03, 0.0]}, "device": "cpu"}
    other = {"cost_model": {"slm": [0.02, 0.0], "llm": [0.05, 0.0]}, "device": "cpu"}
    a = write_lm_eval(tmp_path / "a", samples, info=measured)
    (same,) = diff_json(capsys, a, write_lm_eval(tmp_path / "b", samples, info=measured))
    assert same["notes"] == []
    b = write_lm_eval(tmp_path / "c", samples, info=other)
    assert cli.main(["diff", str(a), str(b)]) == 0
    assert "note: modeled_latency_s: the runs priced their forwards with different cost models" in (
        capsys.readouterr().out
    )


def test_several_tasks_and_the_overall(tmp_path, capsys):
    """Overall pools every task's documents (each task resampled within itself) and discordant pairs."""
    a, b = tmp_path / "a", tmp_path / "b"
    for task, base, run in (("t1", [1, 1, 0, 0], [0, 1, 1, 1]), ("t2", [1, 0, 1], [1, 0, 0])):
        write_lm_eval(a, [Sample(i, s, ["x"], [0]) for i, s in enumerate(base)], task=task)
        write_lm_eval(b, [Sample(i, s, ["x"], []) for i, s in enumerate(run)], task=task)
    write_lm_eval(a, [Sample(0, 1.0, ["x"])], task="t3")  # in the baseline only
    (report,) = diff_json(capsys, a, b)
    assert [t["task"] for t in report["tasks"]] == ["t1", "t2"]
    overall = report["overall"]
    assert overall["n"] == 7 and overall["lost"] == [["t1", 0], ["t2", 2]]
    assert overall["gained"] == [["t1", 2], ["t1", 3]]
    assert overall["p_value"] == pytest.approx(mcnemar_exact(2, 2))
    # 4 right of 7 in each run: two lost, two gained
    assert overall["base"][0] == overall["other"][0] == pytest.approx(4 / 7)
    assert overall["diff"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert report["only_base_tasks"] == ["t3"]
    share = next(d for d in overall["accounting"] if d["field"] == "llm_share")
    assert share["n"] == 7 and share["diff"]["mean"] == -1.0


def test_runs_without_scores_still_compare_their_accounting(tmp_path, capsys):
    """A --predict_only run logs no metric: no score difference, the accounting deltas remain."""
    a = write_lm_eval(tmp_path / "a", [Sample(i, 1.0, ["x", "y"], [0, 1]) for i in range(3)])
    b = write_lm_eval(tmp_path / "b", [Sample(i, 1.0, ["x", "y"], [1]) for i in range(3)])
    for run in (a, b):
        results = next(run.rglob("results_*.json"))
        results.write_text(json.dumps({"results": {"t": {"alias": "t"}}, "config": {}}))
    (report,) = diff_json(capsys, a, b)
    (task,) = report["tasks"]
    assert task["metric"] is None and task["diff"] is None and task["n"] == 0
    assert next(d for d in task["accounting"] if d["field"] == "llm_share")["diff"]["mean"] == -0.5


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--metric", "acc"], "metric 'acc' is not one of this run's: exact_match,none"),
        (["--task", "nope"], "has no task 'nope'; it has: t"),
        (["--labels", "one"], "--labels names 1 runs; 2 were given"),
        (["--resamples", "10"], "--resamples 10: use at least 100"),
    ],
)
def test_bad_options_are_one_line(tmp_path, capsys, extra, message):
    a, b = hand_runs(tmp_path)
    assert cli.main(["diff", str(a), str(b), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_ambiguous_or_unrelated_inputs_are_refused(tmp_path, capsys):
    a, b = hand_runs(tmp_path)
    twice = tmp_path / "twice"
    (twice / "x").mkdir(parents=True)
    for i, src in enumerate((a, b)):
        results = next(src.rglob("results_*.json"))
        (twice / "x" / results.name.replace("results_", f"results_{i}")).write_text(
            results.read_text()
        )
    assert cli.main(["diff", str(a), str(twice)]) == 2
    assert "holds 2 lm-eval runs" in capsys.readouterr().err
    other = write_lm_eval(tmp_path / "other", [Sample(0, 1.0, ["x"])], task="u")
    assert cli.main(["diff", str(a), str(other)]) == 2
    assert "share no task (t vs u)" in capsys.readouterr().err
    e1 = write_evalplus(tmp_path / "e1", {"HumanEval/0": [(True, True)]})
    e2 = write_evalplus(tmp_path / "e2", {"HumanEval/0": [(True, True)]})
    graded = e2.with_name(e2.stem + "_eval_results.json")
    graded.write_text(graded.read_text().replace('"hash": "abc"', '"hash": "v2"'))
    assert cli.main(["diff", str(e1), str(e2)]) == 2
    assert "graded on different dataset versions (abc vs v2)" in capsys.readouterr().err
