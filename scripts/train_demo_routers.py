"""Train the shipped demo routers, router_ckpts/demo-r2r/ and router_ckpts/demo-citer/, on the demo pair.

Prompts use both demo tasks' formats (tasks/demo/utils.py) but never their questions: for routed_demo,
the countries and words that make_data.py left out, plus others listed here; for routed_demo_cot,
problems from make_cot_data's training seed. So the demo's scores are not measured on the routers'
training data. Each format is labelled as its task decodes it (a short answer ends at a newline, a
worked solution at a blank line), and one router is trained on both. Everything runs offline on CPU;
every step resumes from the work folder. Sizes and optimiser settings are scaled down for a few hundred tokens
(the paper's lr 5e-5 at batch 1024 would take a step per epoch here); the config.json of each router
records what was used.

    python scripts/train_demo_routers.py [--workdir build/demo-routers] [--out router_ckpts] [--only citer]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lm_eval_routed.config_args import load_config  # noqa: E402
from lm_eval_routed.core.rows import GenRequest  # noqa: E402
from lm_eval_routed.loading import demo_pair  # noqa: E402
from lm_eval_routed.loading.runtime import build_runtime  # noqa: E402
from lm_eval_routed.routers import checkpoint  # noqa: E402
from lm_eval_routed.training.citer import (  # noqa: E402
    CiterOptions,
    first_line_match,
    round_labels,
    run_citer,
    split_by_sample,
)
from lm_eval_routed.training.common import JsonlLog, claim_workdir  # noqa: E402
from lm_eval_routed.training.r2r_combine import combine_labels  # noqa: E402
from lm_eval_routed.training.r2r_labels import LabelOptions, build_labels  # noqa: E402
from lm_eval_routed.training.r2r_train import (  # noqa: E402
    R2RArch,
    load_dataset,
    split_by_response,
    train_r2r,
)
from lm_eval_routed.training.rstitch_rollouts import Prompt  # noqa: E402
from lm_eval_routed.training.rstitch_train import (  # noqa: E402
    RStitchPlusOptions,
    run_latency,
    train_rstitch_plus,
)
from lm_eval_routed.training.trainer import TrainOptions  # noqa: E402

# Questions outside demo.jsonl (answers are only needed by CITER's checker).
MORE_CAPITALS = {
    "Brazil": "Brasilia",
    "Colombia": "Bogota",
    "Ukraine": "Kyiv",
    "Switzerland": "Bern",
    "Malaysia": "Kuala Lumpur",
    "Nigeria": "Abuja",
    "Ghana": "Accra",
    "Mongolia": "Ulaanbaatar",
    "Uruguay": "Montevideo",
    "Paraguay": "Asuncion",
    "Bolivia": "Sucre",
    "Ecuador": "Quito",
    "Cambodia": "Phnom Penh",
    "Laos": "Vientiane",
    "Sri Lanka": "Colombo",
    "Bangladesh": "Dhaka",
    "Kazakhstan": "Astana",
    "Uzbekistan": "Tashkent",
    "Georgia": "Tbilisi",
    "Armenia": "Yerevan",
    "Serbia": "Belgrade",
    "Croatia": "Zagreb",
    "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana",
    "Estonia": "Tallinn",
    "Latvia": "Riga",
    "Lithuania": "Vilnius",
    "Belarus": "Minsk",
    "Tunisia": "Tunis",
    "Algeria": "Algiers",
    "Libya": "Tripoli",
    "Sudan": "Khartoum",
    "Uganda": "Kampala",
    "Zimbabwe": "Harare",
    "Zambia": "Lusaka",
    "Angola": "Luanda",
    "Senegal": "Dakar",
    "Jamaica": "Kingston",
    "Panama": "Panama City",
    "Honduras": "Tegucigalpa",
    "Nicaragua": "Managua",
    "Luxembourg": "Luxembourg",
    "Malta": "Valletta",
    "Cyprus": "Nicosia",
    "Albania": "Tirana",
    "Moldova": "Chisinau",
    "Singapore": "Singapore",
    "Oman": "Muscat",
    "Kuwait": "Kuwait City",
    "Costa Rica": "San Jose",
}
MORE_OPPOSITES = {
    "wrong": "right",
    "black": "white",
    "begin": "end",
    "give": "take",
    "come": "go",
    "always": "never",
    "before": "after",
    "above": "below",
    "safe": "dangerous",
    "easy": "hard",
    "cheap": "expensive",
    "asleep": "awake",
    "alive": "dead",
    "friend": "enemy",
    "north": "south",
    "east": "west",
    "king": "queen",
    "remember": "forget",
    "increase": "decrease",
    "positive": "negative",
    "smooth": "rough",
    "tall": "short",
    "in": "out",
    "yes": "no",
    "question": "answer",
    "accept": "refuse",
    "laugh": "cry",
    "borrow": "lend",
    "float": "sink",
    "arrive": "leave",
}


@functools.cache
def _demo_utils():
    """tasks/demo/utils.py, loaded once (the answer checker calls it per rollout)."""
    spec = importlib.util.spec_from_file_location("demo_utils", ROOT / "tasks/demo/utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_rows() -> list[dict]:
    """Prompt, reference and answer for every demo-format question not among the demo's 60."""
    sys.path.insert(0, str(ROOT / "tasks/demo"))
    import make_data  # the demo's own generator: its leftover items are fair training material

    utils = _demo_utils()
    used = {(r["kind"], r["question"]) for r in make_data.build()}
    items = [("capital", q, a) for q, a in {**make_data.CAPITALS, **MORE_CAPITALS}.items()]
    items += [("opposite", q, a) for q, a in {**make_data.OPPOSITES, **MORE_OPPOSITES}.items()]
    rows = []
    for kind, q, a in items:
        if (kind, q) in used:
            continue
        doc = {"kind": kind, "question": q, "answer": a}
        ask = utils.TEMPLATES[kind][0].format(q=q)
        # the task's three-shot prompt, and the bare question for more (and more varied) tokens
        for prompt in (utils.doc_to_text(doc), ask):
            rows.append({"prompt": prompt, "reference": f" {a}\n", "answer": a})
    return rows


COT_TRAIN = 48  # routed_demo_cot-format problems the routers are trained on
COT_TARGET = 16  # further ones, decoded to record the share a routed_demo_cot run should land near
COT_STOP = ("\n\n", "Problem:")  # routed_demo_cot's generation_kwargs
COT_TOKENS = 128
# CITER rolls each both-wrong position of a worked solution out to its end (up to 128 tokens, twice):
# a third of the problems keeps its labelling within minutes on 2 cores
CITER_COT = 16


def cot_rows(n: int = COT_TRAIN, skip: int = 0) -> list[dict]:
    """Prompt, reference and answer for routed_demo_cot-format problems outside its 48."""
    sys.path.insert(0, str(ROOT / "tasks/demo"))
    import make_cot_data

    utils = _demo_utils()
    rows = []
    for row in make_cot_data.training_rows(skip + n)[skip:]:
        prompt = utils.cot_doc_to_text(row)
        opening = prompt.rsplit("\n", 1)[1]  # the prompt ends with the solution's first words
        rows.append(
            {
                "kind": "cot",
                "prompt": prompt,
                "reference": row["solution"][len(opening) :] + "\n\n",
                "answer": row["answer"],
                "rollout_tokens": COT_TOKENS,
                "stop": list(COT_STOP),
            }
        )
    return rows


def demo_checker(text: str, row: dict) -> bool:
    """CITER's answer check for either format: the worked result, or the short answer's first line."""
    if row.get("kind") == "cot":
        return _demo_utils().extract_answer(text) == int(row["answer"])
    return first_line_match(text, row)


def decode_share(
    pair, kind: str, ckpt: Path, prompts: list[str], tokens: int = 8, stop: tuple = ("\n",)
) -> float:
    """Mean per-sample LLM share of the routed decoder on ``prompts``, decoded as their task does.

    A router's validation rate is measured teacher-forced on reference tokens; a run conditions
    later positions on whatever the LLM wrote, so its share differs. This is the share a run on the
    same kind of prompts should land near, and config.json records it as the router's target.
    """
    slm, llm, tok = pair
    cfg = {"router": kind, "router_ckpt": str(ckpt), "cost_slm": "0:0", "cost_llm": "0:0"}
    runtime = build_runtime(load_config({**cfg, "batch_size": 8}), slm=slm, llm=llm, tokenizer=tok)
    reqs = [  # the task's generation_kwargs (greedy)
        GenRequest(tok(p, add_special_tokens=False)["input_ids"], tokens, stop=stop)
        for p in prompts
    ]
    results = runtime.generate(reqs)
    return sum(r.record.llm_share for r in results) / len(results)


def record_target(ckpt: Path, share: float, n_prompts: int, cot_share: float, n_cot: int) -> dict:
    """Add the decode-time shares on held-out prompts of both formats to a checkpoint's config.json."""
    path = ckpt / "config.json"
    config = json.loads(path.read_text())
    config["metrics"]["decode_llm_share"] = round(share, 4)
    config["metrics"]["decode_prompts"] = n_prompts
    config["metrics"]["decode_llm_share_cot"] = round(cot_share, 4)
    config["metrics"]["decode_prompts_cot"] = n_cot
    config["metrics"]["decode_note"] = (
        "mean per-sample LLM share when decoding held-out prompts as each task does (greedy): the "
        "validation questions' routed_demo prompts (until newline, 8 tokens) and routed_demo_cot "
        "problems trained on by neither (until a blank line, 128 tokens); a run should land near"
    )
    checkpoint.write_config(ckpt, config)
    return config


def record_targets(pair, kind: str, ckpt: Path, prompts: list[str]) -> dict:
    """Decode held-out prompts of both formats with the trained router; record the shares."""
    cot = [r["prompt"] for r in cot_rows(COT_TARGET, skip=COT_TRAIN)]
    share = decode_share(pair, kind, ckpt, prompts)
    cot_share = decode_share(pair, kind, ckpt, cot, COT_TOKENS, COT_STOP)
    return record_target(ckpt, share, len(prompts), cot_share, len(cot))


def heldout_task_prompts(rows: list[dict], val_ids: list[int]) -> list[str]:
    """The task-format prompts (even rows) of validation questions: never trained on."""
    return [rows[i]["prompt"] for i in sorted(val_ids) if i % 2 == 0]


R2R_LABEL_FIELDS = (
    "finished",
    "tokens",
    "mismatches",
    "mismatch_rate",
    "divergent",
    "divergent_rate",
    "unparseable",
    "identical_continuations",
    "rows",
)


def demo_r2r(pair, rows: list[dict], cot: list[dict], work: Path, out: Path) -> dict:
    """Label both formats, train router_ckpts/demo-r2r on them; its label and validation figures."""
    slm, llm, tok = pair
    label_opts = LabelOptions(
        max_new_tokens=8, stop=("\n",), cont_tokens=12, batch_size=8, chat=False
    )
    build_labels(
        work / "r2r", slm, llm, tok, [r["prompt"] for r in rows], label_opts, slm_ref="demo:slm"
    )
    cot_opts = LabelOptions(
        max_new_tokens=COT_TOKENS, stop=COT_STOP, cont_tokens=12, batch_size=8, chat=False
    )
    build_labels(
        work / "r2r-cot", slm, llm, tok, [r["prompt"] for r in cot], cot_opts, slm_ref="demo:slm"
    )
    meta = combine_labels([work / "r2r", work / "r2r-cot"], work / "r2r-both")
    train_r2r(
        work / "r2r-both",
        slm,
        out / "demo-r2r",
        R2RArch(width=128, blocks=2, dropout=0.1),
        TrainOptions(lr=1e-3, weight_decay=5e-4, batch_size=64, max_epochs=300, patience=30),
        min_recall=0.95,
        val_frac=0.25,
        slm_ref="demo:slm",
    )
    # target: decode the validation questions (task format) with the trained router; the combined
    # dataset numbers the short-answer part's responses first, as they were
    data, _ = load_dataset(work / "r2r-both")
    _, r2r_val = split_by_response(data, 0.25, 0)
    val = [i for i in r2r_val["response"].unique().tolist() if i < len(rows)]
    cfg = record_targets(pair, "r2r", out / "demo-r2r", heldout_task_prompts(rows, val))
    return {
        "r2r_labels": {k: meta[k] for k in R2R_LABEL_FIELDS},
        "r2r": {"threshold": cfg["threshold"], **cfg["metrics"]},
    }


def demo_citer(pair, rows: list[dict], cot: list[dict], work: Path, out: Path) -> dict:
    """Label both formats, train router_ckpts/demo-citer (two rounds); its label and validation figures."""
    slm, llm, tok = pair
    citer_opts = CiterOptions(
        chat=False,
        rollout_tokens=8,
        stop=("\n",),
        batch_size=8,
        rounds=2,
        min_recall=0.95,
        val_frac=0.25,
    )
    run_citer(
        work / "citer",
        slm,
        llm,
        tok,
        rows + cot,  # the short answers first: sample ids below len(rows) are theirs
        demo_checker,
        citer_opts,
        TrainOptions(lr=1e-3, weight_decay=0.0, batch_size=64, max_epochs=200, patience=20),
        out / "demo-citer",
        slm_ref="demo:slm",
    )
    # target: decode the validation questions (task format) with the trained router
    book = JsonlLog(
        work / "citer" / f"rollouts-r{citer_opts.rounds - 1}.jsonl", ("sample", "position")
    )
    feats = load_file(work / "citer" / "features.safetensors")
    _, citer_val = split_by_sample(round_labels(feats, book), citer_opts.val_frac, 0)
    val = [i for i in citer_val["sample"].unique().tolist() if i < len(rows)]
    cfg = record_targets(pair, "citer", out / "demo-citer", heldout_task_prompts(rows, val))
    return {
        "citer_labels": cfg["data"],
        "citer": {"threshold": cfg["threshold"], **cfg["metrics"]},
    }


# R-Stitch+: worked problems of make_cot_data's training seed after those R2R, CITER and the target
# shares used (never routed_demo_cot's); tau low enough that the policy is asked where the student goes
# wrong (at 0.1 the always-switching policy keeps the SLM's accuracy), lambda per second of L-hat
RSP_CANDIDATES = 320  # decoded by the LLM alone; the first RSP_PROMPTS it solves are trained on
RSP_PROMPTS = 96
RSP_OPTIONS = RStitchPlusOptions(
    threshold=0.02,
    lam=0.25,
    group=8,
    prompts_per_step=8,
    steps=24,
    updates=2,
    lr=3e-4,
    width=64,
    context_scale=512.0,
    max_new_tokens=COT_TOKENS,
    stop=COT_STOP,
    seed=0,
    init_switch=0.9,
)


def demo_rstitch_plus(pair, work: Path, out: Path) -> dict:
    """Fit the latency model on the demo pair, train router_ckpts/demo-rstitch-plus by RL (DAPO)."""
    slm, llm, tok = pair
    folder = work / "rstitch-plus"
    rows = llm_solved(pair, cot_rows(RSP_CANDIDATES, skip=COT_TRAIN + COT_TARGET), folder)
    rows = rows[:RSP_PROMPTS]
    claim_workdir(
        folder,
        "rstitch-plus",
        {
            "slm": "demo:slm",
            "llm": "demo:llm",
            "checker": "demo_checker",
            "data": _rows_digest(rows),
            **RSP_OPTIONS.settings(),
        },
    )
    # the schedule only batches: tokens do not depend on it, so no cost needs measuring here
    cfg = {
        "config": "demo",
        "router": "entropy",
        "threshold": RSP_OPTIONS.threshold,
        "batch_size": 16,
        "cost_slm": "0:0",
        "cost_llm": "0:0",
    }
    runtime = build_runtime(load_config(cfg), slm=slm, llm=llm, tokenizer=tok)
    latency = run_latency(runtime, folder, None)
    prompts = [Prompt(tok(r["prompt"], add_special_tokens=False)["input_ids"], r) for r in rows]
    last = train_rstitch_plus(
        runtime,
        prompts,
        demo_checker,
        RSP_OPTIONS,
        folder,
        out / "demo-rstitch-plus",
        latency,
        slm_ref="demo:slm",
        data_fingerprint=_rows_digest(rows),
    )
    cot = [r["prompt"] for r in cot_rows(COT_TARGET, skip=COT_TRAIN)]
    cot_share = decode_share(
        pair, "rstitch-plus", out / "demo-rstitch-plus", cot, COT_TOKENS, COT_STOP
    )
    path = out / "demo-rstitch-plus" / "config.json"
    config = json.loads(path.read_text())
    config["metrics"]["decode_llm_share_cot"] = round(cot_share, 4)
    config["metrics"]["decode_prompts_cot"] = len(cot)
    checkpoint.write_config(out / "demo-rstitch-plus", config)
    return {"rstitch_plus": {**last, "decode_llm_share_cot": round(cot_share, 4)}}


def llm_solved(pair, rows: list[dict], folder: Path) -> list[dict]:
    """The rows the LLM alone answers right (greedy, as routed_demo_cot decodes), kept in
    ``solved.json``: where the answer is within the pair's reach, a group's rewards differ by the
    router's choices; on a problem the LLM fails every rollout scores 0 and its group is dropped."""
    path = folder / "solved.json"
    if path.is_file():
        solved = json.loads(path.read_text())
    else:
        slm, llm, tok = pair
        cfg = {
            "config": "demo",
            "router": "llm-only",
            "batch_size": 16,
            "cost_slm": "0:0",
            "cost_llm": "0:0",
        }
        runtime = build_runtime(load_config(cfg), slm=slm, llm=llm, tokenizer=tok)
        reqs = [
            GenRequest(
                tok(r["prompt"], add_special_tokens=False)["input_ids"], COT_TOKENS, stop=COT_STOP
            )
            for r in rows
        ]
        results = runtime.generate(reqs)
        solved = [demo_checker(res.text, row) for res, row in zip(results, rows)]
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(solved) + "\n")
    logging.info("the LLM alone solves %d of %d candidate problems", sum(solved), len(rows))
    return [row for row, ok in zip(rows, solved) if ok]


def _rows_digest(rows: list[dict]) -> str:
    """sha256 of the training rows as JSON (what the policy was trained on)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Label, train and write the demo routers; print their label and validation figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=str(ROOT / "build" / "demo-routers"))
    p.add_argument("--out", default=str(ROOT / "router_ckpts"))
    p.add_argument(
        "--only",
        choices=("r2r", "citer", "rstitch-plus"),
        help="train one router (each trains on its own seeds)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    work, out = Path(args.workdir), Path(args.out)
    llm, tok = demo_pair.load_demo_llm(torch.float32, "cpu")
    slm, _ = demo_pair.load_demo_slm(torch.float32, "cpu")
    rows, cot = training_rows(), cot_rows()
    logging.info("%d short-answer and %d worked-solution training questions", len(rows), len(cot))
    summary: dict = {}
    if args.only in (None, "r2r"):
        summary |= demo_r2r((slm, llm, tok), rows, cot, work, out)
    if args.only in (None, "citer"):
        summary |= demo_citer((slm, llm, tok), rows, cot[:CITER_COT], work, out)
    if args.only in (None, "rstitch-plus"):
        summary |= demo_rstitch_plus((slm, llm, tok), work, out)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
