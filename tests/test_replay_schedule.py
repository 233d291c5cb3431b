"""scripts/replay_schedule.py: its stand-in models make the decoder's own LLM forwards."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from lm_eval_routed.core.accounting import CostModel
from lm_eval_routed.core.rows import GenRequest

ROOT = Path(__file__).resolve().parents[1]
COSTS = CostModel(slm=(0.0084, 0.00013), llm=(0.031, 0.00087))


@pytest.fixture(scope="module")
def replay():
    spec = importlib.util.spec_from_file_location("replay", ROOT / "scripts" / "replay_schedule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(**kw) -> argparse.Namespace:
    base = dict(eos_rate=0.0, llm_min_batch=0, no_lookahead=False, batch=4, costs=COSTS)
    return argparse.Namespace(**{**base, "timing": COSTS, **kw})


@pytest.mark.parametrize("p", [0.15, 0.4])
def test_stand_ins_make_the_forwards_real_models_make(replay, make_runtime, p):
    # 8 requests at batch 4: slots are handed on, then the run's end; rows ride along
    rt = make_runtime(
        router="random", p=str(p), batch_size=4, cost_slm="0.0084:0.00013", cost_llm="0.031:0.00087"
    )
    for draw in range(3):
        rt.decoder.eos_ids, rt.decoder.trace = set(), []
        prompts = [[2 + i] * replay.PROMPT for i in range(8)]
        rt.generate([GenRequest(ids, 12, seed=draw * 8 + i) for i, ids in enumerate(prompts)])
        real = [fed for model, fed in rt.decoder.trace if model == "llm"]
        assert len(real) > 0
        assert replay.replay(p, 8, 12, draw, settings(), lockstep=False)[0] == len(real)


def test_rows_end_on_their_drawn_lengths_under_either_schedule(replay):
    args = settings(eos_rate=0.1, batch=8)
    for draw in range(3):
        pause = replay.replay(0.2, 8, 40, draw, args, lockstep=False)
        lockstep = replay.replay(0.2, 8, 40, draw, args, lockstep=True)
        assert pause[1] == lockstep[1] < 8 * 40  # the same tokens, ended early by EOS
        assert lockstep[0] > pause[0]


def test_prints_a_row_per_share_and_sample(replay, capsys):
    rows = replay.main(["--p", "0.15", "--samples", "8x16", "4x8", "--draws", "3"])
    assert [(r["p"], r["sample"]) for r in rows] == [(0.15, "8x16"), (0.15, "4x8")]
    low, high = rows[0]["fewer_than_lockstep_range"]
    assert 1 < low <= rows[0]["fewer_than_lockstep"] <= high
    assert "8x16" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--samples", "8by64"], "REQUESTSxTOKENS"),
        (["--p", "1.5"], "LLM share"),
        (["--cost-llm", "fast"], "--cost-llm 'fast'"),
        (["--time-slm", "1:2:3"], "--time-slm"),
    ],
)
def test_bad_arguments_get_one_line(replay, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        replay.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
