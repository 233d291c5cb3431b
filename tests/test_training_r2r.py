"""R2R label pipeline and router training on tiny random models: shapes, label rules, resumability."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from lm_eval_routed.config_args import load_config
from lm_eval_routed.routers.base import StepView, make_router
from lm_eval_routed.routers.r2r import R2RNet
from lm_eval_routed.training import r2r_labels, verifier
from lm_eval_routed.training.common import JsonlLog, greedy, load_shards, save_shard
from lm_eval_routed.training.r2r_labels import LabelOptions, build_labels, step_dataset
from lm_eval_routed.training.r2r_train import R2RArch, train_r2r
from lm_eval_routed.training.trainer import TrainOptions

PROMPTS = ["Q: 1+1?\nA:", "Q: name a colour\nA:", "Q: 2+3?\nA:", "hello ", "Say yes."]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_greedy_batch_matches_single_rows_and_cuts_at_stop(pair, tokenizer):
    llm = pair[1]
    prompts = [ids(tokenizer, p) for p in PROMPTS[:3]]
    batch = greedy(llm, tokenizer, prompts, 10)
    for p, (row, finished) in zip(prompts, batch):
        single = llm.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False)[0, len(p) :]
        assert row == single.tolist() and not finished
    stop = tokenizer.decode(batch[0][0][3:4])  # a character the first response really writes
    cut, finished = greedy(llm, tokenizer, prompts[:1], 10, (stop,))[0]
    assert finished and cut == batch[0][0][: len(cut)] and tokenizer.decode(cut).endswith(stop)
    assert stop not in tokenizer.decode(cut[:-1])


def test_parse_verdict_and_identical_shortcut(pair, tokenizer):
    assert verifier.parse_verdict(" Yes, they differ") == 1
    assert verifier.parse_verdict("no.") == 0
    assert verifier.parse_verdict("maybe") is None
    assert verifier.parse_verdict("NO - yes") == 0  # the first answer word counts
    out = verifier.judge(pair[1], tokenizer, [("ctx", " same", "same "), ("ctx", "a.", "b.")])
    assert out[0] == verifier.Verdict(0, "identical")
    # the reply is the judge model's own greedy text for the question, parsed by its first YES/NO
    prompt = ids(tokenizer, verifier.verifier_prompt("ctx", "a.", "b."))  # no chat template here
    made = pair[1].generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
    reply = tokenizer.decode(made[0, len(prompt) :], skip_special_tokens=True)
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", reply) if w.lower() in ("yes", "no")]
    assert out[1] == verifier.Verdict({"yes": 1, "no": 0}.get(words[0]) if words else None, reply)


def test_dataset_rules_on_a_hand_built_shard(tmp_path):
    hidden = torch.arange(12.0).reshape(6, 2)
    save_shard(
        tmp_path / "features" / "shard-00000.safetensors",
        {
            "hidden": hidden,
            "topk": torch.zeros(6, 3),
            "slm_token": torch.tensor([5, 6, 7, 8, 9, 10]),
            "llm_token": torch.tensor([5, 0, 7, 0, 0, 10]),  # mismatches at rows 1, 3, 4
            "response": torch.tensor([0, 0, 0, 1, 1, 1]),
            "position": torch.tensor([0, 1, 2, 0, 1, 2]),
        },
    )
    book = JsonlLog(tmp_path / "verdicts.jsonl", ("response", "position"))
    book.extend(
        [
            {"response": 0, "position": 1, "label": 1, "raw": "YES"},
            {"response": 1, "position": 0, "label": None, "raw": "??"},
            {"response": 1, "position": 1, "label": 0, "raw": "identical"},
        ]
    )
    stats = step_dataset(tmp_path, book, n_queries=3, n_finished=2)
    data = load_shards(tmp_path / "dataset")
    assert data["label"].tolist() == [0, 1, 0, 0, 0]  # the unparseable row 3 is dropped
    assert data["mismatch"].tolist() == [False, True, False, True, False]
    assert data["token"].tolist() == [5, 6, 7, 9, 10]  # the SLM's token, which the router embeds
    assert torch.equal(data["hidden"], hidden[[0, 1, 2, 4, 5]])
    assert (stats.tokens, stats.mismatches, stats.divergent, stats.rows) == (6, 3, 1, 5)
    assert (stats.unparseable, stats.identical_continuations) == (1, 1)


def _fake_judge(model, tok, items, chat=True):
    """Divergent when the continuations differ in length parity; unparseable when A is empty."""
    return [
        verifier.Verdict(None, "") if not a.strip() else verifier.Verdict(len(a) % 2, "x")
        for _, a, _ in items
    ]


@pytest.fixture
def stop_char(pair, tokenizer):
    first = greedy(pair[1], tokenizer, [ids(tokenizer, PROMPTS[0])], 16)[0][0]
    return tokenizer.decode(first[5:6])


def test_label_pipeline_shapes_and_resume(tmp_path, pair, tokenizer, stop_char, monkeypatch):
    slm, llm = pair
    monkeypatch.setattr(verifier, "judge", _fake_judge)
    opts = LabelOptions(
        max_new_tokens=16,
        stop=(stop_char,),
        top_k=8,
        cont_tokens=6,
        batch_size=2,
        shard_responses=2,
        chat=False,
    )
    meta = build_labels(tmp_path, slm, llm, tokenizer, PROMPTS, opts)
    responses = [json.loads(x) for x in (tmp_path / "responses.jsonl").read_text().splitlines()]
    finished = [r for r in responses if r["finished"]]
    assert len(responses) == len(PROMPTS) and meta["finished"] == len(finished) >= 1
    feats = load_shards(tmp_path / "features")
    n_tokens = sum(len(r["response_ids"]) for r in finished)
    assert feats["hidden"].shape == (n_tokens, slm.config.hidden_size)
    assert feats["topk"].shape == (n_tokens, 8)
    assert bool((feats["topk"][:, :-1] >= feats["topk"][:, 1:]).all())  # sorted descending
    # the stored features are the SLM's own: recompute one response's last position
    r = finished[0]
    seq = torch.tensor([r["prompt_ids"] + r["response_ids"]])
    logits = slm(seq).logits[0, -2]
    row = (feats["response"] == r["id"]).nonzero().flatten()[-1]
    assert int(feats["slm_token"][row]) == int(logits.argmax())
    torch.testing.assert_close(feats["topk"][row], logits.topk(8).values, rtol=1e-4, atol=1e-4)
    assert meta["mismatches"] == int((feats["slm_token"] != feats["llm_token"]).sum())
    assert meta["tokens"] == n_tokens
    first = {k: v.clone() for k, v in load_shards(tmp_path / "dataset").items()}

    def refuse(*args, **kwargs):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr(r2r_labels, "greedy", refuse)
    assert build_labels(tmp_path, slm, llm, tokenizer, PROMPTS, opts) == meta

    # a crash mid-way: the last continuation lines (one cut short) and a feature shard are lost
    monkeypatch.undo()
    monkeypatch.setattr(verifier, "judge", _fake_judge)
    conts = tmp_path / "continuations.jsonl"
    lines = conts.read_text().splitlines()
    conts.write_text("\n".join(lines[:-2]) + "\n" + lines[-1][:10])
    (tmp_path / "verdicts.jsonl").unlink()
    (tmp_path / "features" / "shard-00000.safetensors").unlink()
    assert build_labels(tmp_path, slm, llm, tokenizer, PROMPTS, opts) == meta
    again = load_shards(tmp_path / "dataset")
    for key, value in first.items():
        torch.testing.assert_close(again[key], value)


def _synthetic_dataset(folder, hidden_size=64, vocab=98, n_resp=40, per=50, k=8):
    """Divergent exactly where the first hidden feature is positive: learnable, known answer."""
    gen = torch.Generator().manual_seed(0)
    n = n_resp * per
    hidden = torch.randn(n, hidden_size, generator=gen)
    label = (hidden[:, 0] > 1.0).float()
    save_shard(
        folder / "shard-00000.safetensors",
        {
            "hidden": hidden,
            "topk": torch.randn(n, k, generator=gen).sort(-1, descending=True).values,
            "token": torch.randint(0, vocab, (n,), generator=gen),
            "label": label,
            "mismatch": label.bool(),
            "response": torch.arange(n_resp).repeat_interleave(per),
            "position": torch.arange(per).repeat(n_resp),
        },
    )
    meta = {
        "hidden_size": hidden_size,
        "vocab_size": vocab,
        "top_k": k,
        "fingerprint": "f",
        "rows": n,
        "tokens": n,
        "mismatch_rate": 0.2,
        "divergent_rate": float(label.mean()),
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def test_train_r2r_writes_a_router_the_decoder_loads(tmp_path, pair):
    slm = pair[0]
    _synthetic_dataset(tmp_path / "data")
    opts = TrainOptions(lr=1e-3, batch_size=128, max_epochs=30, patience=4)
    cfg = train_r2r(
        tmp_path / "data",
        slm,
        tmp_path / "ckpt",
        R2RArch(32, 2, 0.0),
        opts,
        min_recall=0.9,
        val_frac=0.25,
    )
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert cfg["metrics"]["val_recall"] >= 0.9
    assert cfg["metrics"]["val_llm_rate"] < 0.6  # it learned something: far fewer than all tokens
    assert cfg["training"]["pos_weight"] > 1  # n_neg / n_pos on a rare positive class
    stored = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(stored) == set(R2RNet(64, 32, 2, 8).state_dict())  # the embedding is not stored
    router = make_router("r2r", load_config(router_ckpt=str(tmp_path / "ckpt"), router="r2r"), slm)
    assert router.threshold == cfg["threshold"]
    # the data's known rule: divergent exactly where the first hidden feature is above 1; far from
    # that edge, every decision must follow it
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(16, 64, generator=g)
    hidden[:, 0] = torch.tensor([4.0, -4.0]).repeat(8)
    logits = torch.randn(16, 98, generator=g)
    view = StepView(logits, hidden, torch.randint(0, 98, (16,), generator=g))
    assert router.route(view).tolist() == [True, False] * 8


def test_label_cli_runs_on_saved_models(tmp_path, pair, tokenizer, stop_char):
    from lm_eval_routed.training.cli import main

    for name, model in (("slm", pair[0]), ("llm", pair[1])):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"question": p}) + "\n" for p in PROMPTS[:3]))
    argv = [
        "r2r-label",
        "--slm",
        str(tmp_path / "slm"),
        "--llm",
        str(tmp_path / "llm"),
        "--queries",
        str(queries),
        "--prompt-field",
        "question",
        "--workdir",
        str(tmp_path / "w"),
        "--max-new-tokens",
        "16",
        "--stop",
        stop_char,
        "--top-k",
        "8",
        "--cont-tokens",
        "4",
        "--no-chat",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "w" / "dataset" / "meta.json").read_text())
    assert meta["queries"] == 3 and meta["top_k"] == 8 and meta["hidden_size"] == 64
    bad = [*argv[:7], "--prompt-field", "nope", *argv[9:]]
    assert main(bad) == 2


def test_train_refuses_a_folder_without_labels_before_loading(tmp_path, monkeypatch, capsys):
    from lm_eval_routed.training import cli

    def no_loading(*a, **k):
        raise AssertionError("the SLM was loaded before --data was checked")

    monkeypatch.setattr(cli, "load_pair_model", no_loading)
    code = cli.main(["r2r", "--slm", "demo:slm", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert code == 2
    assert "is not an R2R label dataset (no meta.json)" in capsys.readouterr().err
