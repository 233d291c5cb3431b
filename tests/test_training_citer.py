"""CITER labels (shortcut rules, rollouts, relabel rounds) and training on tiny random models."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from lm_eval_routed.config_args import load_config
from lm_eval_routed.routers.base import StepView, make_router
from lm_eval_routed.training import citer
from lm_eval_routed.training.citer import (
    BOTH_WRONG,
    LLM_RIGHT,
    SLM_RIGHT,
    CiterOptions,
    first_line_match,
    round_labels,
    run_citer,
    shortcut_kinds,
)
from lm_eval_routed.training.common import JsonlLog, greedy
from lm_eval_routed.training.trainer import TrainOptions


def test_shortcut_rules_on_hand_built_positions():
    ref = torch.tensor([1, 2, 3, 4])
    slm = torch.tensor([1, 9, 9, 4])
    llm = torch.tensor([1, 2, 9, 0])
    assert shortcut_kinds(ref, slm, llm).tolist() == [SLM_RIGHT, LLM_RIGHT, BOTH_WRONG, SLM_RIGHT]


def test_round_labels_take_rollouts_and_drop_unrolled(tmp_path):
    feats = {
        "hidden": torch.arange(8.0).reshape(4, 2),
        "ref_token": torch.tensor([1, 2, 3, 4]),
        "slm_token": torch.tensor([1, 9, 9, 9]),
        "llm_token": torch.tensor([0, 2, 8, 8]),
        "sample": torch.tensor([0, 0, 1, 1]),
        "position": torch.tensor([0, 1, 0, 1]),
    }
    book = JsonlLog(tmp_path / "r.jsonl", ("sample", "position"))
    book.extend([{"sample": 1, "position": 0, "label": 1, "text": "x"}])  # (1, 1) never rolled out
    data = round_labels(feats, book)
    assert data["label"].tolist() == [1.0, 0.0, 1.0]
    assert data["kind"].tolist() == [SLM_RIGHT, LLM_RIGHT, BOTH_WRONG]
    assert torch.equal(data["hidden"], feats["hidden"][:3])


def test_first_line_match():
    assert first_line_match(" Warsaw.\nQ: next", {"answer": "warsaw"})
    assert not first_line_match("Berlin", {"answer": "Warsaw"})


def _rows(pair, tokenizer):
    """References: the LLM's own greedy text with two characters replaced (both models miss those)."""
    rows = []
    for i, prompt in enumerate(["Q: 1+1?\nA:", "Q: hi\nA:", "Q: 3*3?\nA:", "abc ", "xyz "]):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out = greedy(pair[1], tokenizer, [ids], 10)[0][0]
        out[3], out[7] = 40 + i, 60 + i
        rows.append({"prompt": prompt, "reference": tokenizer.decode(out), "answer": "?"})
    return rows


def parity_checker(text: str, row: dict) -> bool:
    """A stand-in for a task checker: deterministic in the rollout text, both outcomes occur."""
    return len(text) % 2 == 0


def test_citer_rounds_label_train_and_load(tmp_path, pair, tokenizer, monkeypatch):
    slm, llm = pair
    rows = _rows(pair, tokenizer)
    opts = CiterOptions(
        chat=False, rollout_tokens=5, batch_size=4, rounds=2, val_frac=0.4, min_recall=0.8
    )
    topts = TrainOptions(lr=1e-3, batch_size=16, max_epochs=4, patience=2)
    out = tmp_path / "ckpt"
    cfg = run_citer(tmp_path / "w", slm, llm, tokenizer, rows, parity_checker, opts, topts, out)
    feats = citer.load_file(tmp_path / "w" / "features.safetensors")
    n_ref = sum(len(tokenizer(r["reference"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert feats["hidden"].shape == (n_ref, slm.config.hidden_size)
    kinds = shortcut_kinds(feats["ref_token"], feats["slm_token"], feats["llm_token"])
    both = int((kinds == BOTH_WRONG).sum())
    assert both >= 10  # the replaced characters at least
    r0 = [json.loads(x) for x in (tmp_path / "w" / "rollouts-r0.jsonl").read_text().splitlines()]
    r1 = [json.loads(x) for x in (tmp_path / "w" / "rollouts-r1.jsonl").read_text().splitlines()]
    assert len(r0) == len(r1) == both  # every both-wrong position, relabelled in round 1
    for rec in r0:  # round 0 is the SLM alone, greedy: recompute one rollout by hand
        row = rows[rec["sample"]]
        ref = tokenizer(row["reference"], add_special_tokens=False)["input_ids"]
        head = ref[: rec["position"]]
        assert rec["text"].startswith(tokenizer.decode(head))
        assert rec["label"] == int(parity_checker(rec["text"], row))
    rec = r0[0]
    ref = tokenizer(rows[rec["sample"]]["reference"], add_special_tokens=False)["input_ids"]
    prompt = tokenizer(rows[rec["sample"]]["prompt"], add_special_tokens=False)["input_ids"]
    slm_tok = int(
        feats["slm_token"][
            (feats["sample"] == rec["sample"]) & (feats["position"] == rec["position"])
        ]
    )
    tail = greedy(slm, tokenizer, [prompt + ref[: rec["position"]] + [slm_tok]], 5)[0][0]
    assert rec["text"] == tokenizer.decode(ref[: rec["position"]] + [slm_tok] + tail)
    assert cfg["round"] == 1 and cfg["kind"] == "citer"
    assert (tmp_path / "w" / "router-r0" / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text()) == cfg
    # the stored weights through CITER's network written out by hand: Linear, BatchNorm (running
    # statistics), ReLU, Linear, then Linear(h, 1) and a sigmoid; below the threshold goes to the LLM
    w = citer.load_file(out / "model.safetensors")
    hidden = torch.randn(16, 64, generator=torch.Generator().manual_seed(4))
    x = F.linear(hidden, w["mlp.0.weight"], w["mlp.0.bias"])
    x = F.batch_norm(
        x, w["mlp.1.running_mean"], w["mlp.1.running_var"], w["mlp.1.weight"], w["mlp.1.bias"]
    )
    x = F.linear(F.relu(x), w["mlp.4.weight"], w["mlp.4.bias"])
    confidence = torch.sigmoid(F.linear(x, w["linear.weight"], w["linear.bias"])).flatten()
    view = StepView(torch.randn(16, 98), hidden, torch.zeros(16, dtype=torch.long))
    low, high = confidence.sort().values[7:9].tolist()
    middle = (low + high) / 2  # a threshold at which both decisions occur, away from any score
    for threshold in (cfg["threshold"], middle):
        args = {"router": "citer", "router_ckpt": str(out), "threshold": str(threshold)}
        router = make_router("citer", load_config(args), slm)
        assert router.route(view).tolist() == (confidence < threshold).tolist(), threshold
    default = make_router("citer", load_config(router="citer", router_ckpt=str(out)), slm)
    assert default.threshold == cfg["threshold"]

    def refuse(*args, **kwargs):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr(
        citer, "train_round", refuse
    )  # a rerun trains nothing and rolls nothing out
    monkeypatch.setattr(citer, "forward_features", refuse)
    again = run_citer(tmp_path / "w", slm, llm, tokenizer, rows, refuse, opts, topts, out)
    assert again == cfg


def test_rollouts_take_a_rows_own_budget_and_stop(tmp_path, tokenizer):
    """Rows of two formats in one run: each rolls out with its own budget and stop strings."""
    from types import SimpleNamespace

    seen = []

    class Runtime:
        def __init__(self):
            self.tokenizer = tokenizer
            self.llm = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))

        def generate(self, reqs):
            seen.extend(reqs)
            return [SimpleNamespace(text=" 7") for _ in reqs]

    rows = [
        {"prompt": "a", "reference": " x y", "answer": "7"},
        {"prompt": "b", "reference": " x y", "answer": "7", "rollout_tokens": 99, "stop": ["\n\n"]},
    ]
    feats = {  # one both-wrong position per row
        "ref_token": torch.tensor([5, 5]),
        "slm_token": torch.tensor([6, 6]),
        "llm_token": torch.tensor([7, 7]),
        "sample": torch.tensor([0, 1]),
        "position": torch.tensor([0, 0]),
    }
    opts = CiterOptions(chat=False, rollout_tokens=8, stop=("\n",), batch_size=2)
    citer.step_rollouts(tmp_path, 0, Runtime(), rows, feats, lambda text, row: True, opts)
    assert [(r.max_new_tokens, tuple(r.stop)) for r in seen] == [(8, ("\n",)), (99, ("\n\n",))]
