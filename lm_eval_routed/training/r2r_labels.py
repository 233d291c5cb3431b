"""R2R's label pipeline (arXiv 2505.21600, Sec. 4): which SLM tokens diverge from the LLM's reasoning.

Five resumable steps, each writing into one work folder:

1. ``responses.jsonl``: the LLM's greedy response to every query; only finished ones (EOS or a stop
   string within the budget) go further.
2. ``features/shard-*.safetensors``: the SLM teacher-forced over prompt + response. One row per
   response token: ``hidden`` (H, last layer after the final norm), ``topk`` (k raw logits, sorted
   descending), ``slm_token`` (the SLM's greedy token), ``llm_token`` (the response token),
   ``response`` and ``position``. A mismatch is a row where the two tokens differ.
3. ``continuations.jsonl``: at each mismatch, the LLM continues greedily from prefix + SLM token to a
   sentence end; the LLM's own continuation is read from its response (greedy decoding from prefix +
   its own token reproduces it).
4. ``verdicts.jsonl``: the verifier's label per mismatch (1 divergent, 0 neutral, null unparseable).
5. ``dataset/shard-*.safetensors`` + ``dataset/meta.json``: one row per response token, columns
   ``hidden``, ``topk``, ``token`` (the SLM token, embedded by the router), ``label`` (0 for identical
   tokens, the verdict at mismatches), ``mismatch``, ``response``, ``position``; mismatches with an
   unparseable verdict are dropped. ``meta.json`` holds counts, rates and the shards' fingerprint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from lm_eval_routed.files import write_atomic
from lm_eval_routed.training import verifier
from lm_eval_routed.training.common import (
    JsonlLog,
    batched,
    cut_at_stop,
    encode_prompt,
    fingerprint,
    forward_features,
    greedy,
    save_shard,
    shard_paths,
)

log = logging.getLogger(__name__)

SENTENCE_END = (".", "!", "?", "\n")


@dataclass(frozen=True)
class LabelOptions:
    """Knobs of the label pipeline (defaults follow the paper where it gives one)."""

    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()  # extra strings that end a response (besides EOS)
    top_k: int = 100
    cont_tokens: int = 32  # budget of a continuation to the sentence end
    sentence_end: tuple[str, ...] = SENTENCE_END
    batch_size: int = 8
    shard_responses: int = 64  # responses per feature shard
    chat: bool = True  # query prompts through the chat template (the verifier always is)
    feature_dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class LabelStats:
    """What the pipeline produced (also written to ``dataset/meta.json``)."""

    queries: int
    finished: int
    tokens: int
    mismatches: int
    divergent: int
    unparseable: int
    identical_continuations: int
    rows: int

    @property
    def mismatch_rate(self) -> float:
        """Share of response tokens where the SLM's greedy token differs from the LLM's."""
        return self.mismatches / max(self.tokens, 1)

    @property
    def divergent_rate(self) -> float:
        """Share of kept rows labelled divergent."""
        return self.divergent / max(self.rows, 1)


def step_responses(workdir: Path, llm, tok, prompts: list[str], opts: LabelOptions) -> list[dict]:
    """Step 1: the LLM's greedy responses; returns the finished ones, ordered by query id."""
    book = JsonlLog(workdir / "responses.jsonl", ("id",))
    todo = [i for i in range(len(prompts)) if (i,) not in book]
    for chunk in tqdm(list(batched(todo, opts.batch_size)), desc="LLM responses", disable=not todo):
        ids = [encode_prompt(tok, prompts[i], opts.chat) for i in chunk]
        outs = greedy(llm, tok, ids, opts.max_new_tokens, opts.stop)
        book.extend(
            {"id": i, "prompt_ids": p, "response_ids": r, "finished": done}
            for i, p, (r, done) in zip(chunk, ids, outs)
        )
    rows = [book.records[(i,)] for i in range(len(prompts))]
    return [r for r in rows if r["finished"] and r["response_ids"]]


def step_features(workdir: Path, slm, responses: list[dict], opts: LabelOptions) -> None:
    """Step 2: SLM teacher-forced over each response; one feature shard per group of responses."""
    groups = list(batched(responses, opts.shard_responses))
    folder = workdir / "features"
    for n, group in enumerate(tqdm(groups, desc="SLM features")):
        path = folder / f"shard-{n:05d}.safetensors"
        ids = ",".join(str(r["id"]) for r in group)
        if path.is_file():
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("responses") != ids:
                    raise RuntimeError(
                        f"{path} was built from other responses; use a fresh work folder"
                    )
            continue
        cols: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("hidden", "topk", "slm_token", "llm_token", "response", "position")
        }
        for batch in batched(group, opts.batch_size):
            seqs = [r["prompt_ids"] + r["response_ids"] for r in batch]
            hidden, logits = forward_features(slm, seqs)
            for b, r in enumerate(batch):
                start, n_resp = len(r["prompt_ids"]) - 1, len(r["response_ids"])
                rows = slice(start, start + n_resp)  # the positions that predict response tokens
                cols["hidden"].append(hidden[b, rows].to(opts.feature_dtype))
                cols["topk"].append(logits[b, rows].topk(opts.top_k, dim=-1).values.float())
                cols["slm_token"].append(logits[b, rows].argmax(-1))
                cols["llm_token"].append(torch.tensor(r["response_ids"]))
                cols["response"].append(torch.full((n_resp,), r["id"]))
                cols["position"].append(torch.arange(n_resp))
        save_shard(path, {k: torch.cat(v) for k, v in cols.items()}, {"responses": ids})


def read_columns(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Some columns of every shard of ``folder``, concatenated (the rest is never read)."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    for path in shard_paths(folder):
        with safe_open(str(path), framework="pt") as fh:
            for k in names:
                out[k].append(fh.get_tensor(k))
    return {k: torch.cat(v) for k, v in out.items()}


def mismatches(workdir: Path) -> list[tuple[int, int, int]]:
    """(response id, position, SLM token) of every mismatch in the feature shards."""
    cols = read_columns(workdir / "features", ("slm_token", "llm_token", "response", "position"))
    where = (cols["slm_token"] != cols["llm_token"]).nonzero().flatten().tolist()
    return [
        (int(cols["response"][i]), int(cols["position"][i]), int(cols["slm_token"][i]))
        for i in where
    ]


def step_continuations(
    workdir: Path, llm, tok, responses: list[dict], opts: LabelOptions
) -> JsonlLog:
    """Step 3: both continuations to a sentence end at every mismatch."""
    book = JsonlLog(workdir / "continuations.jsonl", ("response", "position"))
    by_id = {r["id"]: r for r in responses}
    todo = [m for m in mismatches(workdir) if m[:2] not in book]
    stops, cont = opts.sentence_end, opts.cont_tokens
    for chunk in tqdm(list(batched(todo, opts.batch_size)), desc="continuations", disable=not todo):
        prefixes = [
            by_id[r]["prompt_ids"] + by_id[r]["response_ids"][:t] + [s] for r, t, s in chunk
        ]
        outs = greedy(llm, tok, prefixes, cont, stops)
        recs = []
        for (r, t, s), (new, _) in zip(chunk, outs):
            slm_side, _ = cut_at_stop(tok, [s] + new, stops, set())
            own = by_id[r]["response_ids"][t : t + cont + 1]
            llm_side, _ = cut_at_stop(tok, own, stops, set())
            recs.append(
                {
                    "response": r,
                    "position": t,
                    "slm_token": s,
                    "slm_text": tok.decode(slm_side, skip_special_tokens=True),
                    "llm_text": tok.decode(llm_side, skip_special_tokens=True),
                }
            )
        book.extend(recs)
    return book


def step_verdicts(
    workdir: Path,
    judge_model,
    judge_tok,
    responses: list[dict],
    conts: JsonlLog,
    opts: LabelOptions,
) -> JsonlLog:
    """Step 4: the verifier's label at every mismatch (None when its reply cannot be parsed)."""
    book = JsonlLog(workdir / "verdicts.jsonl", ("response", "position"))
    by_id = {r["id"]: r for r in responses}
    todo = [c for k, c in sorted(conts.records.items()) if k not in book]
    for chunk in tqdm(list(batched(todo, opts.batch_size)), desc="verifier", disable=not todo):
        items = []
        for c in chunk:
            r = by_id[c["response"]]
            context = judge_tok.decode(
                r["prompt_ids"] + r["response_ids"][: c["position"]], skip_special_tokens=True
            )
            items.append((context, c["slm_text"], c["llm_text"]))
        # the verifier is asked as an assistant whatever the queries' format
        verdicts = verifier.judge(judge_model, judge_tok, items, chat=True)
        book.extend(
            {"response": c["response"], "position": c["position"], "label": v.label, "raw": v.raw}
            for c, v in zip(chunk, verdicts)
        )
    return book


def step_dataset(workdir: Path, verdicts: JsonlLog, n_queries: int, n_finished: int) -> LabelStats:
    """Step 5: labelled rows (one per response token) as shards, plus ``meta.json``."""
    out = workdir / "dataset"
    for old in shard_paths(out):
        old.unlink()  # rebuilt from the steps above every time: cheap and always consistent
    counts = dict(tokens=0, mismatches=0, divergent=0, rows=0)
    for n, path in enumerate(shard_paths(workdir / "features")):
        with safe_open(str(path), framework="pt") as fh:
            cols = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        mismatch = cols["slm_token"] != cols["llm_token"]
        label = torch.zeros_like(mismatch, dtype=torch.float32)
        keep = torch.ones_like(mismatch)
        for i in mismatch.nonzero().flatten().tolist():
            v = verdicts.records.get((int(cols["response"][i]), int(cols["position"][i])))
            if v is None or v["label"] is None:
                keep[i] = False
            else:
                label[i] = float(v["label"])
        counts["tokens"] += len(mismatch)
        counts["mismatches"] += int(mismatch.sum())
        counts["divergent"] += int(label[keep].sum())
        counts["rows"] += int(keep.sum())
        save_shard(
            out / f"shard-{n:05d}.safetensors",
            {
                "hidden": cols["hidden"][keep],
                "topk": cols["topk"][keep],
                "token": cols["slm_token"][keep],
                "label": label[keep],
                "mismatch": mismatch[keep],
                "response": cols["response"][keep],
                "position": cols["position"][keep],
            },
        )
    labels = [v["label"] for v in verdicts.records.values()]
    stats = LabelStats(
        queries=n_queries,
        finished=n_finished,
        unparseable=sum(v is None for v in labels),
        identical_continuations=sum(v["raw"] == "identical" for v in verdicts.records.values()),
        **counts,
    )
    return stats


def write_meta(workdir: Path, stats: LabelStats, slm, slm_ref: str, top_k: int) -> dict:
    """``dataset/meta.json``: counts, rates, sizes the router needs, and the shards' fingerprint."""
    meta = {
        **asdict(stats),
        "mismatch_rate": stats.mismatch_rate,
        "divergent_rate": stats.divergent_rate,
        "slm": slm_ref,
        "hidden_size": slm.config.hidden_size,
        "vocab_size": slm.get_input_embeddings().weight.shape[0],
        "top_k": top_k,
        "fingerprint": fingerprint(shard_paths(workdir / "dataset")),
    }
    write_atomic(workdir / "dataset" / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def build_labels(
    workdir: Path,
    slm,
    llm,
    tok,
    prompts: list[str],
    opts: LabelOptions,
    judge=None,
    slm_ref: str = "slm",
) -> dict:
    """Run (or resume) all five steps; ``judge`` is (model, tokenizer), by default the LLM's."""
    workdir.mkdir(parents=True, exist_ok=True)
    judge_model, judge_tok = judge or (llm, tok)
    responses = step_responses(workdir, llm, tok, prompts, opts)
    log.info("%d of %d responses finished", len(responses), len(prompts))
    if not responses:
        raise RuntimeError(
            "no LLM response finished within max_new_tokens; raise it or add a --stop string"
        )
    step_features(workdir, slm, responses, opts)
    conts = step_continuations(workdir, llm, tok, responses, opts)
    verdicts = step_verdicts(workdir, judge_model, judge_tok, responses, conts, opts)
    stats = step_dataset(workdir, verdicts, len(prompts), len(responses))
    return write_meta(workdir, stats, slm, slm_ref, opts.top_k)
