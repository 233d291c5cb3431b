"""Which lm-eval requests get an accounting record, and how records reach lm-eval's samples.

lm-eval sends each request ``repeats`` times. Under data parallelism a rank with fewer requests also
gets extra copies of its last one, so that every rank runs as many (padding): ``plan`` tells them
apart, and a padding copy takes the answer of the request it copies and leaves no record. An
evaluation's records are gathered from every rank when it ends and attached to each logged sample
under ``"routed"`` (``attach``); lm-eval's tracker writes them beside its sample files too
(``write_jsonl``). Under ``--use_cache`` each request's records are stored in lm-eval's cache file
beside its response (``store_cached``), and a response served from there brings them back marked
``cached`` (``cached_records``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval.api.model import hash_args
from lm_eval.utils import hash_string

from lm_eval_routed.adapters.joins import bare, flat, records_by_sample
from lm_eval_routed.files import write_atomic

# key prefix of our entries in lm-eval's cache (its own keys are bare sha256 digests)
CACHE_PREFIX = "routed-records:"

# task -> its samples' flattened records, from the latest evaluation attached; read by write_jsonl
_ROWS: dict[str, list[dict[str, Any]]] = {}


@dataclass(frozen=True)
class Slot:
    """One request as lm-eval sent it: the request whose answer it gets, and its record's key."""

    source: int  # index of that request in the list (its own index unless a padding copy)
    key: dict[str, Any] | None  # join key of its record; None for a padding copy (no record)

    @property
    def genuine(self) -> bool:
        """Whether this request is computed and recorded (not a padding copy)."""
        return self.key is not None


def plan(requests: list, padded: bool) -> list[Slot]:
    """A slot per request: copies past a request's ``repeats`` are padding when ``padded`` (ranks > 1)."""
    seen: Counter[tuple] = Counter()
    genuine: dict[tuple, list[int]] = {}
    slots = []
    for i, inst in enumerate(requests):
        ident = (inst.task_name, inst.doc_id, inst.idx)
        copy = seen[ident]
        seen[ident] += 1
        mine = genuine.setdefault(ident, [])
        if padded and copy >= (inst.repeats or 1):
            slots.append(Slot(source=mine[copy % len(mine)], key=None))
        else:
            mine.append(i)
            slots.append(Slot(source=i, key=key_of(inst, copy)))
    return slots


def key_of(inst, repeat: int) -> dict[str, Any]:
    """Join key with lm-eval's sample log: task, doc_id, request idx, repeat, prompt_hash."""
    return {
        "task": inst.task_name,
        "doc_id": inst.doc_id,
        "idx": inst.idx,
        "repeat": repeat,
        "prompt_hash": hash_string(inst.args[0]),
    }


def attach(samples: dict[str, list[dict[str, Any]]], records: list[dict[str, Any]]) -> None:
    """Put each logged sample's records under ``"routed"``, in request and repeat order."""
    by_task: dict[Any, dict[Any, list[dict[str, Any]]]] = {}
    for record in records:
        key = record["key"]
        by_task.setdefault(key.get("task"), {}).setdefault(key.get("doc_id"), []).append(record)
    for task, logged in samples.items():
        docs = by_task.get(task, {})
        for recs in docs.values():
            recs.sort(key=lambda r: (r["key"].get("idx") or 0, r["key"].get("repeat") or 0))
        rows, written = [], set()
        for sample, recs in zip(logged, records_by_sample(logged, docs)):
            sample["routed"] = [bare(r) for r in recs]
            if sample.get("doc_id") not in written:  # a doc logged once per filter: its rows once
                written.add(sample.get("doc_id"))
                rows += [{**flat(r), "doc_id": sample.get("doc_id")} for r in recs]  # lm-eval's id
        _ROWS[task] = rows


def write_jsonl(tracker, task_name: str, samples: list[dict[str, Any]]) -> None:
    """Write ``routed_<task>_<date>.jsonl`` beside lm-eval's sample file of a routed run's task."""
    rows = _ROWS.get(task_name)
    if not tracker.output_path or not rows or not samples or "routed" not in samples[0]:
        return
    path = Path(tracker.output_path)
    path = (
        path.parent
        if path.suffix == ".json"
        else path / tracker.general_config_tracker.model_name_sanitized
    )
    path.mkdir(parents=True, exist_ok=True)
    target = path / f"routed_{task_name}_{tracker.date_id}.jsonl"
    write_atomic(target, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def _cached_key(attr: str, inst) -> str:
    return CACHE_PREFIX + hash_args(attr, inst.args)


def store_cached(cache, attr: str, requests: list, slots: list[Slot], records: list) -> None:
    """Keep each genuine request's records in lm-eval's cache (``cache``), beside its response."""
    kept: dict[str, list[dict[str, Any]]] = {}
    for slot, record in zip((s for s in slots if s.genuine), records):
        inst = requests[slot.source]
        if attr == "generate_until" and inst.args[1].get("do_sample", False):
            continue  # lm-eval never serves sampled generations from its cache
        kept.setdefault(_cached_key(attr, inst), []).append(bare(record))
    for key, recs in kept.items():
        cache[key] = recs
    cache.commit()


def cached_records(
    cache, attr: str, requests: list, slots: list[Slot], live: set[tuple]
) -> tuple[list[dict[str, Any]], int]:
    """Records of the genuine requests lm-eval answered from its cache (not among ``live``, the
    requests this model computed), marked ``cached``; and how many of those had none stored."""
    out, missing = [], 0
    for slot in slots:
        inst = requests[slot.source]
        if not slot.genuine or (inst.task_name, inst.doc_id, inst.idx) in live:
            continue
        stored = cache.get(_cached_key(attr, inst))
        if not stored:
            missing += 1
            continue
        out.append({**stored[slot.key["repeat"] % len(stored)], "cached": True, "key": slot.key})
    return out, missing
