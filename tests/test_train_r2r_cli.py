"""R2R's verifier, `train r2r-label --verifier` and `train r2r` run as a user runs them, checked against
verdicts worked out by hand and routing decisions recomputed here from plain forwards of the SLM.

The judges are tiny Llamas built to answer one fixed reply: with attention and MLP outputs zeroed and a
one-hot embedding, a Llama's next token depends on the last token alone, so its lm_head spells out a
chosen chain of characters after the verifier prompt's final '.'."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from helpers import char_tokenizer, tiny_llama
from saved_pair import encode, near_pair, next_tokens, save

from lm_eval_routed.config_args import load_config
from lm_eval_routed.loading.runtime import build_runtime
from lm_eval_routed.routers.base import StepView
from lm_eval_routed.training import verifier
from lm_eval_routed.training.cli import main
from lm_eval_routed.training.common import save_shard

EOS = 1
PROMPTS = ["Q: 1+1?\nA:", "Q: name a colour\nA:", "Q: 2+3?\nA:", "hello ", "Say yes. "]


def judge_model(reply: str) -> torch.nn.Module:
    """A Llama whose greedy reply to any text ending in '.' is ``reply`` then EOS."""
    tok = char_tokenizer()
    model = tiny_llama(1, seed=3, hidden=128)
    chain = encode(tok, "." + reply)
    nxt = {a: b for a, b in zip(chain, chain[1:])}
    assert len(nxt) == len(chain) - 1  # each character once: the chain is unambiguous
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(98, 128))
        head = torch.zeros(98, 128)
        for token in range(98):
            head[nxt.get(token, EOS), token] = 10.0
        model.lm_head.weight.copy_(head)
    return model


JUDGES = {"yes": "YES", "no_then_yes": "NO YES", "rambling": "xyz"}


@pytest.fixture(scope="module")
def judges():
    return {name: judge_model(reply) for name, reply in JUDGES.items()}


def test_verifier_verdicts_match_the_judges_replies(judges):
    tok = char_tokenizer()
    context = "Q: 2+2?\nA: Let us add. 2+2"
    items = [
        (context, " = 4.", " = 5."),  # divergent
        (context, " = 4.", "  = 4.   "),  # the same once stripped: neutral, no question asked
        (context, " is four.", " equals four."),  # only wording differs, but the judge decides
    ]
    want = {  # the reply the judge spells out, its first YES/NO word, 0 for identical continuations
        "yes": [(1, "YES"), (0, "identical"), (1, "YES")],
        "no_then_yes": [(0, "NO YES"), (0, "identical"), (0, "NO YES")],
        "rambling": [(None, "xyz"), (0, "identical"), (None, "xyz")],
    }
    for name, model in judges.items():
        got = verifier.judge(model, tok, items)
        assert [(v.label, v.raw) for v in got] == want[name], name


@pytest.fixture(scope="module")
def models():
    return near_pair()


@pytest.fixture(scope="module")
def folders(models, judges, tmp_path_factory):
    slm, llm = models
    return save(tmp_path_factory.mktemp("pair"), {"slm": slm, "llm": llm, **judges})


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def label_argv(folders: dict, queries: str, workdir, judge: str, stops: list[str]) -> list[str]:
    argv = ["r2r-label", "--slm", folders["slm"], "--llm", folders["llm"]]
    argv += ["--verifier", folders[judge], "--queries", queries, "--workdir", str(workdir)]
    argv += ["--max-new-tokens", "16", "--top-k", "8", "--cont-tokens", "4", "--no-chat"]
    return argv + ["--device", "cpu", *(f"--stop={s}" for s in stops)]


def test_r2r_label_asks_the_verifier_it_is_given(tmp_path, folders, models, capsys):
    slm, llm = models
    tok = char_tokenizer()
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    # a character each response writes early on ends it: every response finishes
    stops = sorted({tok.decode(next_tokens_greedy(llm, encode(tok, p), 6)[5:6]) for p in PROMPTS})
    work = tmp_path / "yes"
    assert main(label_argv(folders, str(queries), work, "yes", stops)) == 0
    meta = json.loads(capsys.readouterr().out)

    # mismatches, recomputed: where the SLM's greedy token differs from the LLM's response token
    mismatches = set()
    for r in jsonl(work / "responses.jsonl"):
        if r["finished"]:
            p, resp = r["prompt_ids"], r["response_ids"]
            slm_top = next_tokens(slm, p + resp)[len(p) - 1 : len(p) - 1 + len(resp)]
            mismatches |= {(r["id"], t) for t, (a, b) in enumerate(zip(slm_top, resp)) if a != b}
    assert len(mismatches) >= 5
    conts = {(c["response"], c["position"]): c for c in jsonl(work / "continuations.jsonl")}
    assert set(conts) == mismatches
    same = {k for k, c in conts.items() if c["slm_text"].strip() == c["llm_text"].strip()}
    verdicts = {(v["response"], v["position"]): v for v in jsonl(work / "verdicts.jsonl")}
    assert {k: (v["label"], v["raw"]) for k, v in verdicts.items()} == {
        k: (0, "identical") if k in same else (1, "YES") for k in mismatches
    }
    assert meta["divergent"] == len(mismatches - same) > 0 and meta["unparseable"] == 0
    assert meta["rows"] == meta["tokens"]

    # the same responses and continuations judged by a judge that never answers: all dropped
    again = tmp_path / "rambling"
    again.mkdir()
    for name in ("responses.jsonl", "continuations.jsonl", "features"):
        copy = shutil.copytree if (work / name).is_dir() else shutil.copyfile
        copy(work / name, again / name)
    assert main(label_argv(folders, str(queries), again, "rambling", stops)) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["unparseable"] == len(mismatches - same) and meta["divergent"] == 0
    assert meta["rows"] == meta["tokens"] - len(mismatches - same)


@torch.inference_mode()
def next_tokens_greedy(model, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids`` (plain generate)."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=1)
    return out[0, len(ids) :].tolist()


# -- train r2r: a label dataset whose labels are a function of the router's input -------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz .,"
TOP_K = 8


@torch.inference_mode()
def slm_steps(slm, tok, n: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """The SLM over ``n`` random texts: hidden state (after the final norm), logits and greedy token
    at every position, as a decoding step shows them to the router."""
    rnd = random.Random(seed)
    texts = ["".join(rnd.choice(LETTERS) for _ in range(length)) for _ in range(n)]
    hidden = slm.model(torch.tensor([encode(tok, t) for t in texts])).last_hidden_state
    logits = slm.lm_head(hidden)
    return {
        "hidden": hidden.reshape(n * length, -1),
        "logits": logits.reshape(n * length, -1),
        "response": torch.arange(n).repeat_interleave(length),
        "position": torch.arange(length).repeat(n),
    }


def divergent(hidden: torch.Tensor) -> torch.Tensor:
    """The constructed truth: the SLM's token diverges where hidden feature 0 is positive."""
    return hidden[:, 0] > 0


def write_dataset(folder, steps: dict[str, torch.Tensor], hidden_size: int) -> None:
    """A label dataset in the layout `train r2r-label` writes (dataset/shard-*.safetensors + meta)."""
    label = divergent(steps["hidden"]).float()
    save_shard(
        folder / "dataset" / "shard-00000.safetensors",
        {
            "hidden": steps["hidden"],
            "topk": steps["logits"].topk(TOP_K, dim=-1).values,
            "token": steps["logits"].argmax(-1),
            "label": label,
            "mismatch": label.bool(),
            "response": steps["response"],
            "position": steps["position"],
        },
    )
    n = len(label)
    meta = {"hidden_size": hidden_size, "vocab_size": 98, "top_k": TOP_K, "fingerprint": "x"}
    meta |= {"rows": n, "tokens": n, "mismatch_rate": 0.5, "divergent_rate": float(label.mean())}
    (folder / "dataset" / "meta.json").write_text(json.dumps(meta))


def test_train_r2r_learns_which_tokens_diverge(tmp_path, folders, models, capsys):
    slm, llm = models
    tok = char_tokenizer()
    write_dataset(tmp_path / "work", slm_steps(slm, tok, 40, 24, seed=0), slm.config.hidden_size)
    out = tmp_path / "router"
    argv = ["r2r", "--slm", folders["slm"], "--data", str(tmp_path / "work"), "--out", str(out)]
    argv += ["--width", "32", "--blocks", "2", "--dropout", "0", "--lr", "1e-3"]
    argv += ["--train-batch", "64", "--epochs", "40", "--patience", "6", "--val-frac", "0.25"]
    assert main([*argv, "--min-recall", "0.9", "--device", "cpu"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["kind"] == "r2r" and json.loads((out / "config.json").read_text()) == cfg
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    # the checkpoint as a user loads it: router=r2r,router_ckpt=...
    args = {"router": "r2r", "router_ckpt": str(out), "cost_slm": "0:0", "cost_llm": "0:0"}
    router = build_runtime(load_config(args), slm=slm, llm=llm, tokenizer=tok).router
    assert router.name == "r2r" and router.threshold == cfg["threshold"]

    # decoding steps on texts it never saw: the LLM should get exactly the divergent positions
    fresh = slm_steps(slm, tok, 10, 24, seed=1)
    logits, hidden = fresh["logits"], fresh["hidden"]
    routed = router.route(StepView(logits, hidden, logits.argmax(-1)))
    want = divergent(hidden)
    agree = float((routed == want).float().mean())
    assert 0.3 < float(want.float().mean()) < 0.7  # both sides well represented
    assert agree >= 0.8, agree  # 0.93 as trained here; a constant router: under 0.6
