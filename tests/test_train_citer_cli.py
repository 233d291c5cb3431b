"""`lm-eval-routed train citer-label` and `train citer` run as a user runs them (saved models, a JSONL
file, a checker named on the command line), checked against labels and routing decisions computed here
from plain Hugging Face forwards of the same models, by CITER's rule (METHODS.md):
SLM top-1 == reference -> 1; else LLM top-1 == reference -> 0; else the checker's verdict on the SLM's
rollout from prefix + its own token."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest
import torch
from helpers import char_tokenizer
from safetensors.torch import load_file
from saved_pair import SPECIAL, encode, near_pair, next_tokens, save

from lm_eval_routed.config_args import load_config
from lm_eval_routed.loading.runtime import build_runtime
from lm_eval_routed.routers.base import StepView
from lm_eval_routed.training.citer import BOTH_WRONG, LLM_RIGHT, SLM_RIGHT
from lm_eval_routed.training.cli import main

ROLLOUT_TOKENS = 4
PROMPTS = ["Q: 1+1?\nA:", "Q: hi\nA:", "abc ", "xyz ", "Say yes. ", "Q: 7*6?\nA:"]


def parity(text: str, row: dict) -> bool:
    """A checker that depends on the rollout: both outcomes occur on random models."""
    return len(text) % 2 == 0


def accept_all(text: str, row: dict) -> bool:
    return True


def reject_all(text: str, row: dict) -> bool:
    return False


@pytest.fixture(scope="module")
def models():
    return near_pair()


@pytest.fixture(scope="module")
def folders(models, tmp_path_factory):
    slm, llm = models
    return save(tmp_path_factory.mktemp("pair"), {"slm": slm, "llm": llm})


def other_token(t: int, avoid: set[int]) -> int:
    """A printable token none of ``avoid`` is (varied with ``t``)."""
    for step in range(95):
        x = 2 + (7 * t + 3 + step) % 95
        if x not in avoid:
            return x
    raise AssertionError("no token left")


def reference(slm, llm, tok, prompt: str, n: int) -> list[int]:
    """A reference that takes, in turn, the SLM's greedy token, the LLM's, and a token neither picks."""
    p, ref = encode(tok, prompt), []
    for t in range(n):
        g, h = next_tokens(slm, p + ref)[-1], next_tokens(llm, p + ref)[-1]
        want = (g, h, None)[t % 3]
        ref.append(other_token(t, {g, h, *SPECIAL}) if want is None or want in SPECIAL else want)
    return ref


def write_rows(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def citer_argv(what: str, folders: dict, data: str, checker: str, workdir, *extra: str) -> list:
    return [
        what,
        "--slm",
        folders["slm"],
        "--llm",
        folders["llm"],
        "--data",
        data,
        "--checker",
        f"test_train_citer_cli:{checker}",
        "--workdir",
        str(workdir),
        "--rollout-tokens",
        str(ROLLOUT_TOKENS),
        "--batch-size",
        "4",
        "--no-chat",
        "--device",
        "cpu",
        *extra,
    ]


def run(argv: list[str], capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@torch.inference_mode()
def slm_rollout(slm, tok, prompt: list[int], head: list[int]) -> str:
    """The SLM alone, greedy, from prompt + head (which ends in the SLM's token), as text."""
    ids = torch.tensor([prompt + head])
    out = slm.generate(
        ids, max_new_tokens=ROLLOUT_TOKENS, do_sample=False, eos_token_id=1, pad_token_id=1
    )[0, ids.shape[1] :]
    return tok.decode(head + out.tolist(), skip_special_tokens=True)


@dataclass(frozen=True)
class Expected:
    """One reference position as CITER's rule labels it, from the models' own top-1 tokens."""

    kind: int  # SLM_RIGHT, LLM_RIGHT or BOTH_WRONG
    label: int
    slm: int
    llm: int
    ref: int


def expected_labels(models, tok, rows: list[dict], checker) -> dict[tuple[int, int], Expected]:
    """(sample, position) -> its ``Expected`` label, by CITER's rule."""
    slm, llm = models
    out = {}
    for s, row in enumerate(rows):
        prompt, ref = encode(tok, row["prompt"]), encode(tok, row["reference"])
        at = slice(len(prompt) - 1, len(prompt) - 1 + len(ref))  # predictions of reference tokens
        slm_top, llm_top = next_tokens(slm, prompt + ref)[at], next_tokens(llm, prompt + ref)[at]
        for t, (r, g, h) in enumerate(zip(ref, slm_top, llm_top)):
            if g == r:
                kind, label = SLM_RIGHT, 1
            elif h == r:
                kind, label = LLM_RIGHT, 0
            else:
                text = slm_rollout(slm, tok, prompt, ref[:t] + [g])
                kind, label = BOTH_WRONG, int(checker(text, row))
            out[(s, t)] = Expected(kind, label, g, h, r)
    return out


@pytest.fixture(scope="module")
def label_rows(models):
    tok = char_tokenizer()
    rows = []
    for prompt in PROMPTS:
        ref = reference(*models, tok, prompt, 12)
        text = tok.decode(ref)
        assert encode(tok, text) == ref  # the reference survives the round trip through text
        rows.append({"prompt": prompt, "reference": text, "answer": "never"})
    return rows


def test_citer_label_writes_labels_by_citer_rule(tmp_path, folders, models, label_rows, capsys):
    tok = char_tokenizer()
    data = write_rows(tmp_path / "train.jsonl", label_rows)
    work = tmp_path / "w"
    summary = run(citer_argv("citer-label", folders, data, "parity", work), capsys)
    want = expected_labels(models, tok, label_rows, parity)
    kinds = [e.kind for e in want.values()]
    ties = sum(e.kind == SLM_RIGHT and e.llm == e.ref for e in want.values())
    assert ties and LLM_RIGHT in kinds and BOTH_WRONG in kinds  # every case of the rule occurs

    feats = load_file(work / "features.safetensors")
    keys = list(zip(feats["sample"].tolist(), feats["position"].tolist()))
    assert keys == list(want)
    assert feats["slm_token"].tolist() == [want[k].slm for k in keys]
    assert feats["llm_token"].tolist() == [want[k].llm for k in keys]
    assert feats["ref_token"].tolist() == [want[k].ref for k in keys]

    rollouts = [json.loads(x) for x in (work / "rollouts-r0.jsonl").read_text().splitlines()]
    both = {k: e.label for k, e in want.items() if e.kind == BOTH_WRONG}
    assert {(r["sample"], r["position"]): r["label"] for r in rollouts} == both
    assert 0 < sum(both.values()) < len(both)  # the checker said yes and no
    labels = [e.label for e in want.values()]
    assert summary["positions"] == summary["rows"] == len(want)
    assert (summary["slm_right"], summary["llm_right"], summary["both_wrong"]) == (
        kinds.count(SLM_RIGHT),
        kinds.count(LLM_RIGHT),
        kinds.count(BOTH_WRONG),
    )
    assert summary["label_one_share"] == round(sum(labels) / len(labels), 4)


def test_citer_label_honours_the_checker(tmp_path, folders, label_rows, capsys):
    """Accept-everything and reject-everything checkers: only the both-wrong labels move."""
    data = write_rows(tmp_path / "train.jsonl", label_rows)
    got = {}
    for checker in ("accept_all", "reject_all"):
        work = tmp_path / checker
        got[checker] = run(citer_argv("citer-label", folders, data, checker, work), capsys)
        rollouts = [json.loads(x) for x in (work / "rollouts-r0.jsonl").read_text().splitlines()]
        assert rollouts and {r["label"] for r in rollouts} == {int(checker == "accept_all")}
    yes, no = got["accept_all"], got["reject_all"]
    n = yes["positions"]
    assert yes["label_one_share"] == round((yes["slm_right"] + yes["both_wrong"]) / n, 4)
    assert no["label_one_share"] == round(no["slm_right"] / n, 4)
    assert no["both_wrong"] > 0 and yes["label_one_share"] > no["label_one_share"]


# -- train citer: a dataset whose labels are a function of the router's input ----------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz "


@torch.inference_mode()
def last_state(slm, tok, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden after the final norm, logits) at the last position of each prompt, all of one length."""
    hidden = slm.model(torch.tensor([encode(tok, p) for p in prompts])).last_hidden_state[:, -1]
    return hidden, slm.lm_head(hidden)


def slm_is_right(hidden: torch.Tensor) -> torch.Tensor:
    """The constructed truth: the SLM's token is the reference where hidden feature 0 is positive."""
    return hidden[:, 0] > 0


def separable_rows(slm, tok, n: int, seed: int) -> list[dict]:
    """One-token references after random prompts: the SLM's greedy token where ``slm_is_right``
    (label 1), else a token neither it nor (mostly) the LLM picks (label 0: the checker rejects
    every rollout), so the label is a simple function of the hidden state CITER's router reads."""
    rnd = random.Random(seed)
    prompts = ["".join(rnd.choice(LETTERS) for _ in range(6)) for _ in range(n)]
    hidden, logits = last_state(slm, tok, prompts)
    rows = []
    for i, (prompt, right, g) in enumerate(
        zip(prompts, slm_is_right(hidden).tolist(), logits.argmax(-1).tolist())
    ):
        token = g if right and g not in SPECIAL else other_token(i, {g, *SPECIAL})
        rows.append({"prompt": prompt, "reference": tok.decode([token]), "answer": "never"})
    return rows


def test_train_citer_learns_where_the_slm_is_right(tmp_path, folders, models, capsys):
    slm, llm = models
    tok = char_tokenizer()
    data = write_rows(tmp_path / "train.jsonl", separable_rows(slm, tok, 600, seed=0))
    out = tmp_path / "router"
    train = ["--out", str(out), "--lr", "1e-3", "--train-batch", "16", "--epochs", "60"]
    train += ["--patience", "10", "--rounds", "2", "--val-frac", "0.25"]
    cfg = run(citer_argv("citer", folders, data, "reject_all", tmp_path / "w", *train), capsys)
    assert cfg["kind"] == "citer" and cfg["round"] == 1
    assert json.loads((out / "config.json").read_text()) == cfg

    # the checkpoint as a user loads it: router=citer,router_ckpt=...
    args = {"router": "citer", "router_ckpt": str(out), "cost_slm": "0:0", "cost_llm": "0:0"}
    router = build_runtime(load_config(args), slm=slm, llm=llm, tokenizer=tok).router
    assert router.name == "citer" and router.threshold == cfg["threshold"]

    # held-out prompts: the LLM should get exactly the positions where the SLM is not right
    rnd = random.Random(1)
    fresh = ["".join(rnd.choice(LETTERS) for _ in range(6)) for _ in range(200)]
    hidden, logits = last_state(slm, tok, fresh)
    routed = router.route(StepView(logits, hidden, logits.argmax(-1)))
    want = ~slm_is_right(hidden)
    agree = float((routed == want).float().mean())
    assert 0.3 < float(want.float().mean()) < 0.7  # both sides well represented
    assert agree >= 0.8, agree  # 0.91 as trained here; a constant router: under 0.6
