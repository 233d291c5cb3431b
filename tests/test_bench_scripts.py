"""The benchmark scripts run end to end on the proxy pair and keep what they measured."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_routed.config_args import load_config
from lm_eval_routed.loading.runtime import build_runtime

ROOT = Path(__file__).resolve().parents[1]
CASE = "random r=0.15"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proxy")
    script = ROOT / "scripts" / "build_proxy_pair.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True)
    return out / "pair.yaml"


@pytest.mark.slow
def test_bench_writes_every_figure(proxy, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_decoder.py"), "--config", str(proxy)]
    cmd += ["--tokens", "8", "--batches", "2", "--repeats", "2", "--cases", CASE]
    cmd += ["--also-engine", "hf"]
    subprocess.run([*cmd, "--skip-lm-eval", "--json", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert report["complete"] and report["tokens"] == 8
    assert report["engines_used"] == {"slm": "native", "llm": "native"}
    rows = {r["case"]: r for r in report["decoding"]["rows"]}
    assert set(rows) == {"plain slm generate", CASE, f"{CASE} engine=hf"}
    # the same schedule on either engine: only the time differs
    assert rows[f"{CASE} engine=hf"]["llm_share"] == rows[CASE]["llm_share"]
    routed = rows[CASE]
    assert routed["repeats_done"] == 2 and routed["batch"] == 2
    assert 0 < routed["llm_share"] < 1 and routed["llm_forwards_per_100_tokens"] > 0
    assert routed["ratio_vs_ideal"] > 0 and routed["speedup_vs_llm_generate"] > 0
    low, high = routed["speedup_vs_llm_generate_range"]
    assert low <= routed["speedup_vs_llm_generate"] <= high
    try:  # the peak resident set can be reset (Linux): the memory figure is there
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return
    assert 0.5 < routed["peak_memory_vs_plain_pair"] < 2


@pytest.mark.slow
def test_bench_saves_after_every_repeat(proxy):
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench_decoder.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = {"config": str(proxy), "cost_slm": "0:0", "cost_llm": "0:0"}
    first = build_runtime(load_config(cfg))

    def rt_for(extra: dict):
        return build_runtime(
            load_config({**cfg, **extra}), slm=first.slm, llm=first.llm, tokenizer=first.tokenizer
        )

    args = argparse.Namespace(
        tokens=8,
        batches=[2],
        repeats=2,
        requests=None,
        cases=[CASE],
        llm_min_batch=[],
        also_engine=[],
        also_no_lookahead=False,
        warmup=0,
    )
    saved: list[dict] = []
    final = bench.bench_decoding(rt_for, args, saved.append)
    done = [{r["case"]: r["repeats_done"] for r in s["rows"]} for s in saved]
    assert done == [{"plain slm generate": 1, CASE: 1}, {"plain slm generate": 2, CASE: 2}]
    assert saved[-1]["rows"] == final["rows"]


def test_bench_pairs_each_pause_case_with_its_run_without_riding():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench_decoder.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cases = dict(bench.decoding_cases(8, min_batches=[6], without_lookahead=True))
    assert cases["random r=0.15 no lookahead"] == {
        "router": "random",
        "p": "0.15",
        "llm_lookahead": "false",
    }
    assert cases["random r=0.15 min=6 no lookahead"]["llm_min_batch"] == "6"
    assert not any("lockstep" in name and "lookahead" in name for name in cases)
    assert not any("lookahead" in name for name, _ in bench.decoding_cases(8))
    assert not any(
        "lookahead" in name for name, _ in bench.decoding_cases(1, without_lookahead=True)
    )


def test_bench_sets_each_pause_case_against_lockstep_at_its_share():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench_decoder.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fwd = "llm_forwards_per_100_tokens"
    repeat = {
        "random r=0.15": {fwd: 3.0},
        "random r=0.15 no lookahead": {fwd: 4.0},
        "random r=0.15 engine=hf": {fwd: 2.0},
        "random r=0.3": {fwd: 5.0},  # no lockstep at 0.3 ran
        "random r=0.0": {fwd: 0.0},
        "lockstep r=0.0": {fwd: 0.0},
        "lockstep r=0.15": {fwd: 9.0},
        "lockstep r=0.15 engine=hf": {fwd: 8.0},
    }
    bench.versus_lockstep(repeat)
    ratios = {
        name: figures["fewer_llm_forwards_than_lockstep"]
        for name, figures in repeat.items()
        if "fewer_llm_forwards_than_lockstep" in figures
    }
    assert ratios == {
        "random r=0.15": 3.0,
        "random r=0.15 no lookahead": 2.25,
        "random r=0.15 engine=hf": 4.0,
    }
