"""`lm-eval-routed view`: the page read back as HTML reproduces every response and routing trace,
and the token boundaries it draws are the ones recorded when the sample was generated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import missing, write_workspace
from run_fixtures import Sample, record, write_lm_eval
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lm_eval_routed import cli
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.loading.offsets import token_offsets


class Page(HTMLParser):
    """Cards, their sides, and each response's token spans (classes, text), as a browser reads them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: list[dict] = []
        self.tags: list[str] = []
        self.stack: list[tuple[str, set[str]]] = []
        self.external: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        self.tags.append(tag)
        self.external += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag == "section" and "card" in classes:
            data = {k[5:]: v for k, v in attrs.items() if k.startswith("data-")}
            self.cards.append({"data": data, "sides": []})
        elif tag == "div" and "side" in classes:
            self.cards[-1]["sides"].append({"label": "", "responses": []})
        elif tag == "pre" and "resp" in classes:
            self.cards[-1]["sides"][-1]["responses"].append({"classes": classes, "spans": []})
        elif tag == "span" and self.stack and self.stack[-1][0] == "pre":
            self.cards[-1]["sides"][-1]["responses"][-1]["spans"].append([classes, ""])
        if tag not in ("meta", "input", "br"):
            self.stack.append((tag, classes))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if not self.stack:
            return
        tag, _ = self.stack[-1]
        if tag == "span" and len(self.stack) > 1 and self.stack[-2][0] == "pre":
            self.cards[-1]["sides"][-1]["responses"][-1]["spans"][-1][1] += data
        elif tag == "h3" and self.cards and self.cards[-1]["sides"]:
            self.cards[-1]["sides"][-1]["label"] += data


def tokens_of(response: dict) -> list[tuple[set[str], str]]:
    """The spans that stand for generated tokens (``l`` or ``s``), in order."""
    return [(c, t) for c, t in response["spans"] if c & {"l", "s"}]


def render(tmp_path: Path, *args: str) -> Page:
    out = tmp_path / "page.html"
    assert cli.main(["view", *args, "--out", str(out)]) == 0
    return Page(out.read_text(encoding="utf-8"))


TRICKY = [
    Sample(0, 1.0, ["<b>", " &amp;", ' "q"', " 'x'"], [1, 2], target="<b>"),
    Sample(1, 0.0, ["line\n", "\n", "  two", " 😀", "日本", ""], [0, 3, 5]),  # "" = EOS
    Sample(2, 1.0, [" all", " LLM"], [0, 1]),
    Sample(3, 0.5, [" part"], [], repeats=[([" ly", " right"], [1])]),
]


def test_spans_reproduce_each_response_and_its_llm_positions(tmp_path):
    run = write_lm_eval(tmp_path / "run", TRICKY, model_args="router=entropy,threshold=0.2")
    page = render(tmp_path, str(run))
    assert [c["data"]["doc"] for c in page.cards] == [str(s.doc_id) for s in TRICKY]
    for card, sample in zip(page.cards, TRICKY):
        (side,) = card["sides"]
        assert side["label"] == "entropy t=0.2"
        gens = [(sample.pieces, sample.llm), *(sample.repeats or [])]
        assert len(side["responses"]) == len(gens)
        for response, (pieces, llm) in zip(side["responses"], gens):
            spans = tokens_of(response)
            assert "".join(t for _, t in spans) == "".join(pieces)  # the exact text
            assert [t for _, t in spans] == pieces  # cut where the tokens were
            assert [i for i, (c, _) in enumerate(spans) if "l" in c] == llm
            assert sum("sw" in c for c, _ in spans) == record(pieces, llm)["switches"]
        assert card["data"]["score"] == f"{sample.score:g}"
        shares = [len(llm) / len(p) for p, llm in gens]
        assert float(card["data"]["share"]) == pytest.approx(sum(shares) / len(shares))
    assert page.external == []  # nothing fetched: no src= or href= anywhere
    assert "style" in page.tags and "script" in page.tags and "link" not in page.tags


def test_diff_marks_the_first_divergence_and_flips(tmp_path):
    base = [
        Sample(0, 1.0, [" Par", "is"], [0, 1]),
        Sample(1, 0.0, [" Ro", "me"], [0, 1]),
        Sample(2, 1.0, [" same"], [0]),
    ]
    run = [
        Sample(0, 0.0, [" Par", "isian"], [1]),  # parts at char 6: inside token 1 here
        Sample(1, 1.0, [" Ro", "ma"], [0]),
        Sample(2, 1.0, [" same"], []),
    ]
    a = write_lm_eval(tmp_path / "a", base)
    b = write_lm_eval(tmp_path / "b", run, model_args="router=random,p=0.5")
    page = render(tmp_path, str(b), "--diff", str(a))
    flips = [c["data"]["flip"] for c in page.cards]
    assert flips == ["lost", "gained", ""]
    first = page.cards[0]
    assert [s["label"] for s in first["sides"]] == ["random p=0.5", "llm-only"]
    mine, theirs = (s["responses"][0] for s in first["sides"])
    assert [t for c, t in tokens_of(mine) if "dv" in c] == ["isian"]
    # the baseline's text ends where the run's goes on: the mark is an empty span at its end
    assert [t for c, t in theirs["spans"] if "dv" in c] == [""]
    assert "".join(t for _, t in tokens_of(theirs)) == " Paris"
    second = [s["responses"][0] for s in page.cards[1]["sides"]]
    assert [[t for c, t in tokens_of(r) if "dv" in c] for r in second] == [["ma"], ["me"]]
    assert not any("dv" in c for s in page.cards[2]["sides"] for c, _ in s["responses"][0]["spans"])
    html = (tmp_path / "page.html").read_text()
    assert '<option value="flipped">' in html and '<option value="share:desc">' in html


def test_responses_without_usable_offsets_show_their_text_whole(tmp_path):
    run = write_lm_eval(tmp_path / "run", [Sample(0, 1.0, ["a", "b"], [1])])
    samples = next(run.rglob("samples_*.jsonl"))
    line = json.loads(samples.read_text())
    line["routed"][0]["token_offsets"] = [0, 1]  # one offset short of 2 tokens: not trusted
    samples.write_text(json.dumps(line) + "\n")
    (card,) = render(tmp_path, str(run)).cards
    (response,) = card["sides"][0]["responses"]
    assert "notok" in response["classes"] and response["spans"] == [[{"raw"}, "ab"]]


def test_view_refuses_unusable_input_in_one_line(tmp_path, capsys):
    assert cli.main(["view", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not exist" in err
    assert not (tmp_path / "p.html").exists()


# -- token_offsets: boundaries taken from the generated ids ------------------------------------------


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (GPT-2 / Llama 3 / Qwen style): emoji split over several tokens."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(["the cat sat on the mat, naïve café"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer (Llama 2 / Mistral): words carry a leading ``▁``."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<eos>"])
    tk.train_from_iterator(["the cat sat on the mat. a b c"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>")


@pytest.mark.parametrize("make", [byte_level_tokenizer, metaspace_tokenizer])
@pytest.mark.parametrize("text", ["the cat sat", " naïve café 😀 日本!", "a\n\n b  c", "x"])
def test_token_offsets_add_up_to_the_decoded_text(make, text):
    tok = make()
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    whole = tok.decode(ids, skip_special_tokens=True)
    offsets = token_offsets(tok, ids, whole)
    assert offsets is not None and len(offsets) == len(ids) + 1
    assert offsets[0] == 0 and offsets[-1] == len(whole)
    assert offsets == sorted(offsets)
    pieces = [whole[a:b] for a, b in zip(offsets, offsets[1:])]
    assert "".join(pieces) == whole and pieces[-1] == ""  # the EOS writes nothing
    for i, piece in enumerate(pieces):
        alone = tok.decode(ids[i : i + 1], skip_special_tokens=True)
        if "\ufffd" not in alone:  # a token of whole characters is exactly its own text
            # (decoded alone, a SentencePiece word loses the space it starts with)
            assert piece in (alone, " " + alone)
    if any(ord(c) > 0xFFFF for c in whole) and make is byte_level_tokenizer:
        assert "" in pieces[:-1]  # the emoji's first bytes: an empty span, the char goes after


def test_token_offsets_after_a_stop_string_cut():
    tok = byte_level_tokenizer()
    ids = tok("the cat\nsat", add_special_tokens=False)["input_ids"]
    cut = tok.decode(ids).split("\n")[0]  # lm-eval's until=["\n"]
    offsets = token_offsets(tok, ids, cut)
    assert (
        offsets[-1] == len(cut) and "".join(cut[a:b] for a, b in zip(offsets, offsets[1:])) == cut
    )
    assert token_offsets(tok, ids, "not what these ids say") is None


def test_runtime_records_offsets_unless_told_not_to(make_runtime):
    reqs = [GenRequest([5, 6, 7], 9, seed=s) for s in range(3)] + [
        GenRequest([8, 9], 12, stop=("e",), seed=9)
    ]
    (*results,) = make_runtime(router="random", p=0.5, batch_size=2).generate(reqs)
    for res in results:
        offsets = res.record.token_offsets
        assert len(offsets) == res.record.tokens + 1 and offsets[-1] == len(res.text)
        pieces = [res.text[a:b] for a, b in zip(offsets, offsets[1:])]
        assert "".join(pieces) == res.text
    done = []
    quiet = make_runtime(router="random", p=0.5, record_tokens="false")
    assert all(
        r.record.token_offsets is None
        for r in quiet.generate(reqs, on_done=lambda i, r: done.append(r))
    )
    assert len(done) == len(reqs)


# -- the real pipeline -------------------------------------------------------------------------------


@pytest.mark.slow
def test_lm_eval_runs_diff_and_view_end_to_end(tmp_path):
    """Two routers through lm-eval's own CLI on a tiny pair: diff reads them, the page reproduces them."""
    ws = write_workspace(tmp_path / "ws")
    runs = {name: tmp_path / name for name in ("llm", "rand")}
    argvs = [
        [
            *("--model", "routed", "--tasks", "tiny_routed", "--log_samples"),
            *(
                "--model_args",
                f"slm={ws / 'slm'},llm={ws / 'llm'},{args},cost_slm=0:0,cost_llm=0:0",
            ),
            *("--include_path", str(ws / "tasks"), "--output_path", str(runs[name])),
        ]
        for name, args in (("llm", "router=llm-only"), ("rand", "router=random,p=0.5"))
    ]
    # both runs in one interpreter: lm-eval's own CLI entry point, started once
    script = (
        "import sys\nfrom lm_eval.__main__ import cli_evaluate\n"
        f"for argv in {argvs!r}:\n    sys.argv = ['lm_eval', *argv]\n    cli_evaluate()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "diff.json"
    assert (
        cli.main(
            [
                "diff",
                str(runs["llm"]),
                str(runs["rand"]),
                "--samples",
                "--format",
                "json",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (report,) = json.loads(out.read_text())
    (task,) = report["tasks"]
    assert task["n"] == 4 and {d["field"] for d in task["accounting"]} >= {"llm_share", "latency_s"}
    assert next(d for d in task["accounting"] if d["field"] == "llm_share")["base"] == 1.0
    page = render(tmp_path, str(runs["rand"]), "--diff", str(runs["llm"]))
    logged = {
        json.loads(line)["doc_id"]: json.loads(line)
        for line in next(runs["rand"].rglob("samples_*.jsonl")).read_text().splitlines()
    }
    assert [int(card["data"]["doc"]) for card in page.cards] == sorted(logged)
    for card in page.cards:
        doc_id = int(card["data"]["doc"])
        response = card["sides"][0]["responses"][0]
        spans = tokens_of(response)
        assert "".join(t for _, t in spans) == logged[doc_id]["resps"][0][0]
        assert [i for i, (c, _) in enumerate(spans) if "l" in c] == logged[doc_id]["routed"][0][
            "llm_positions"
        ]


@pytest.mark.slow
def test_the_page_renders_in_a_headless_browser(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        missing("no chromium on this machine (apt-get install chromium to run this check)")
    run = write_lm_eval(tmp_path / "run", TRICKY)
    render(tmp_path, str(run))
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--dump-dom",
        (tmp_path / "page.html").as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the script ran: it counted the cards and kept every one shown under the default filter
    assert f"{len(TRICKY)} of {len(TRICKY)} documents" in proc.stdout


def test_diff_of_runs_on_other_prompts_is_refused(tmp_path, capsys):
    a = write_lm_eval(tmp_path / "a", [Sample(0, 1.0, ["x"])])
    b = write_lm_eval(tmp_path / "b", [Sample(0, 1.0, ["x"], prompt="5-shot")])
    assert cli.main(["view", str(b), "--diff", str(a), "--out", str(tmp_path / "p.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "t doc 0:" in err and "different prompts" in err


def test_evalplus_samples_show_the_completion_cut_at_its_tokens(tmp_path):
    from run_fixtures import write_evalplus

    samples = write_evalplus(tmp_path / "e", {"HumanEval/0": [(True, True), (False, False)]})
    (card,) = render(tmp_path, str(samples)).cards
    assert card["data"]["task"] == "humaneval" and card["data"]["score"] == "0.5"
    first, second = card["sides"][0]["responses"]
    # the raw file holds the prompt before each completion; the record's offsets cover the latter
    assert [t for _, t in tokens_of(first)] == ["    return", " 1", "\n"]
    assert [t for _, t in tokens_of(second)] == ["    return", " 0", "\n"]
    assert [i for i, (c, _) in enumerate(tokens_of(first)) if "l" in c] == [1]
