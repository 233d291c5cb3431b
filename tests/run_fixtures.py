"""Runs written to disk as lm-eval, a sweep and EvalPlus write them (for the diff and view tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

P_SLM, P_LLM = 40_000_000, 130_000_000
DATE = "2026-01-02T03-04-05.678901"


@dataclass
class Sample:
    """One document's outcome in a run: the response's tokens (text pieces) and who wrote which."""

    doc_id: int
    score: float
    pieces: list[str]  # one per generated token
    llm: list[int] = field(default_factory=list)  # llm_positions
    prompt: str = ""  # prompt_hash (default: derived from the doc id)
    target: str = "x"
    latency: float = 0.1
    repeats: list[tuple[list[str], list[int]]] | None = None  # more (pieces, llm) per doc

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def record(pieces: list[str], llm: list[int], latency: float = 0.1, offsets: bool = True) -> dict:
    """An accounting record as the decoder writes it for a response made of ``pieces``."""
    n = len(pieces)
    writers = ["llm" if i in llm else "slm" for i in range(n)]
    n_llm = len(llm)
    out = {
        "tokens": n,
        "tokens_slm": n - n_llm,
        "tokens_llm": n_llm,
        "llm_share": n_llm / n if n else 0.0,
        "switches": sum(a != b for a, b in zip(writers, writers[1:])),
        "params_slm": P_SLM,
        "params_llm": P_LLM,
        "activated_params": ((n - n_llm) * P_SLM + n_llm * P_LLM) / n if n else 0.0,
        "activated_params_charged": (n * P_SLM + n_llm * P_LLM) / n if n else 0.0,
        "latency_s": latency,
        "modeled_latency_s": 2 * latency,
        "llm_positions": sorted(llm),
        "scored_by": "generate",
    }
    if offsets:
        ends = [0]
        for piece in pieces:
            ends.append(ends[-1] + len(piece))
        out["token_offsets"] = ends
    return out


def _generations(s: Sample) -> list[tuple[str, dict]]:
    gens = [(s.pieces, s.llm), *(s.repeats or [])]
    return [("".join(p), record(p, llm, s.latency)) for p, llm in gens]


def write_lm_eval(
    root: Path,
    samples: list[Sample],
    task: str = "t",
    model_args: str = "router=llm-only",
    routed_key: bool = True,
    info: dict | None = None,
) -> Path:
    """An lm-eval ``--output_path`` folder: results JSON, sample log (with ``routed``), our JSONL."""
    folder = root / "model"
    folder.mkdir(parents=True, exist_ok=True)  # called again: one more task in the same run
    scores = [s.score for s in samples]
    mean = sum(scores) / len(scores)
    path = folder / f"results_{DATE}.json"
    results = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    results["results"][task] = {
        "alias": task,
        "exact_match,none": mean,
        "exact_match_stderr,none": 0.1,
    }
    results["config"] = {"model": "routed", "model_args": model_args, "routed": info or {}}
    path.write_text(json.dumps(results))
    lines, routed = [], []
    for s in samples:
        gens = _generations(s)
        prompt = s.prompt or f"p{s.doc_id}"
        line = {
            "doc_id": s.doc_id,
            "doc": {"q": "..."},
            "target": s.target,
            "arguments": {"gen_args_0": {"arg_0": "prompt", "arg_1": {}}},
            "resps": [[text for text, _ in gens]],
            "filtered_resps": [gens[0][0]],
            "filter": "none",
            "metrics": ["exact_match"],
            "prompt_hash": prompt,
            "exact_match": s.score,
        }
        if routed_key:
            line["routed"] = [rec for _, rec in gens]
        lines.append(line)
        routed += [
            {"task": task, "doc_id": s.doc_id, "idx": 0, "repeat": r, "prompt_hash": prompt, **rec}
            for r, (_, rec) in enumerate(gens)
        ]
    (folder / f"samples_{task}_{DATE}.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines)
    )
    (folder / f"routed_{task}_{DATE}.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in routed)
    )
    return root


def write_sweep_cell(root: Path, samples: list[Sample], task: str = "t", label: str = "r") -> Path:
    """A sweep's ``OUT/runs/<label>/`` cell: summary JSON and one line per sample."""
    folder = root / "runs" / label
    folder.mkdir(parents=True)
    mean = sum(s.score for s in samples) / len(samples)
    (folder / f"{task}.json").write_text(
        json.dumps({"label": label, "task": task, "metrics": {"exact_match,none": mean}})
    )
    lines = []
    for s in samples:
        gens = _generations(s)
        lines.append(
            {
                "doc_id": s.doc_id,
                "prompt_hash": s.prompt or f"p{s.doc_id}",
                "filter": "none",
                "metrics": {"exact_match": s.score},
                "target": s.target,
                "response": gens[0][0],
                "responses": [text for text, _ in gens],
                "routed": [rec for _, rec in gens],
            }
        )
    (folder / f"{task}.samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def write_evalplus(
    root: Path, outcomes: dict[str, list[tuple[bool, bool]]], prompt: str = "def f():\n"
) -> Path:
    """EvalPlus samples (sanitized and raw, direct completion), graded results and our records.

    ``outcomes``: task_id -> (base passed, plus passed) per sample.
    """
    folder = root / "humaneval"
    folder.mkdir(parents=True)
    base = folder / "demo_routed_temp_0.0"
    samples, raw, routed = [], [], []
    graded: dict[str, list] = {}
    for task_id, results in outcomes.items():
        for i, (ok_base, ok_plus) in enumerate(results):
            pieces = ["    return", " 1" if ok_base else " 0", "\n"]
            samples.append({"task_id": task_id, "solution": prompt + "".join(pieces).strip()})
            raw.append({"task_id": task_id, "solution": prompt + "".join(pieces)})
            routed.append({"task_id": task_id, "sample": i, **record(pieces, [1])})
            graded.setdefault(task_id, []).append(
                {
                    "task_id": task_id,
                    "solution": samples[-1]["solution"],
                    "base_status": "pass" if ok_base else "fail",
                    "plus_status": "pass" if ok_plus else "fail",
                }
            )
    for path, rows in ((f"{base}.jsonl", samples), (f"{base}.raw.jsonl", raw)):
        Path(path).write_text("".join(json.dumps(x) + "\n" for x in rows))
    Path(f"{base}.routed.jsonl").write_text("".join(json.dumps(x) + "\n" for x in routed))
    Path(f"{base}_eval_results.json").write_text(
        json.dumps({"date": "2026-01-02 03:04", "hash": "abc", "eval": graded})
    )
    return Path(f"{base}.jsonl")
