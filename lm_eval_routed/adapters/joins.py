"""Joining the decoder's records to lm-eval's logged samples (the sample logs and the sweep)."""

from __future__ import annotations

from typing import Any


def bare(record: dict[str, Any]) -> dict[str, Any]:
    """A record dict without its join key, as sample logs carry it beside the sample."""
    return {k: v for k, v in record.items() if k != "key"}


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """A record as one JSONL row: its join key's fields, then its own."""
    return {**record["key"], **bare(record)}


def records_by_sample(
    samples: list[dict[str, Any]], docs: dict[Any, list[dict[str, Any]]]
) -> list[list[dict[str, Any]]]:
    """Each lm-eval logged sample's records, from ``docs`` (request doc id -> its record dicts).

    Requests carry a doc's position among the evaluated docs; lm-eval logs the sample at that
    position under ``indices[position]`` when ``--samples`` picks docs, and once per filter. Where
    every logged id is a request doc id of the same prompt, ids are positions; otherwise, within each
    prompt, the distinct logged ids in increasing order pair with the positions in increasing order
    (lm-eval's own numbering, for indices given in increasing order), so a doc logged under several
    filters gets its records in each, and a sample only ever gets records of its own prompt.
    """
    docs = {doc: recs for doc, recs in docs.items() if recs}

    def prompt(doc: Any) -> Any:
        return docs[doc][0]["key"].get("prompt_hash")

    def own(sample: dict[str, Any]) -> bool:
        doc = sample.get("doc_id")
        return doc in docs and sample.get("prompt_hash") in (None, prompt(doc))

    if all(own(sample) for sample in samples):
        return [docs[sample.get("doc_id")] for sample in samples]
    positions: dict[Any, list[Any]] = {}
    for doc in sorted(docs, key=_doc_order):
        positions.setdefault(prompt(doc), []).append(doc)
    logged: dict[Any, set[Any]] = {}
    for sample in samples:
        logged.setdefault(sample.get("prompt_hash"), set()).add(sample.get("doc_id"))
    pair = {
        (hash_, doc_id): doc
        for hash_, ids in logged.items()
        for doc_id, doc in zip(sorted(ids, key=_doc_order), positions.get(hash_, []))
    }
    return [docs.get(pair.get((s.get("prompt_hash"), s.get("doc_id"))), []) for s in samples]


def _doc_order(doc: Any) -> tuple[bool, Any]:
    return (doc is None, doc)
