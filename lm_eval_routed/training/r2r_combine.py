"""One R2R label dataset from several label work folders: one router trained on several prompt formats.

Each format is labelled in a work folder of its own (``r2r_labels.build_labels``), because the LLM's
responses end differently per format (a short answer at a newline, a worked solution at a blank line).
This writes ``<out>/dataset/`` as ``build_labels`` would: the parts' shards in order, with response ids
renumbered so that no two parts share one (validation splits by whole responses), and a ``meta.json``
whose counts are the parts' sums and whose fingerprint covers the combined shards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from safetensors.torch import load_file

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import write_atomic
from lm_eval_routed.training.common import fingerprint, save_shard, shard_paths
from lm_eval_routed.training.r2r_labels import LabelStats

SHARED = ("slm", "hidden_size", "vocab_size", "top_k")  # what every part must agree on


def _meta(workdir: Path) -> dict:
    path = workdir / "dataset" / "meta.json"
    if not path.is_file():
        raise ConfigError(
            f"{workdir} holds no R2R label dataset (dataset/meta.json); label it first"
        )
    return json.loads(path.read_text())


def combine_labels(workdirs: list[Path], out: Path) -> dict:
    """Write ``out/dataset`` from the label datasets of ``workdirs``; returns its meta."""
    if not workdirs:
        raise ConfigError("give at least one label work folder to combine")
    metas = [_meta(w) for w in workdirs]
    for w, meta in zip(workdirs[1:], metas[1:]):
        differ = [k for k in SHARED if meta[k] != metas[0][k]]
        if differ:
            raise ConfigError(
                f"{w} was labelled with another {', '.join(differ)} than {workdirs[0]}; "
                "label every part with the same SLM and top_k"
            )
    folder = out / "dataset"
    for old in shard_paths(folder):
        old.unlink()
    n, offset = 0, 0
    for w in workdirs:
        top = -1
        for path in shard_paths(w / "dataset"):
            cols = load_file(path)
            top = max(top, int(cols["response"].max()) if len(cols["response"]) else -1)
            cols["response"] = cols["response"] + offset
            save_shard(folder / f"shard-{n:05d}.safetensors", cols)
            n += 1
        offset += top + 1
    counts = {f.name: sum(m[f.name] for m in metas) for f in fields(LabelStats)}
    stats = LabelStats(**counts)
    meta = {
        **asdict(stats),
        "mismatch_rate": stats.mismatch_rate,
        "divergent_rate": stats.divergent_rate,
        **{k: metas[0][k] for k in SHARED},
        "fingerprint": fingerprint(shard_paths(folder)),
        "parts": [
            {"folder": w.name, "fingerprint": m["fingerprint"]} for w, m in zip(workdirs, metas)
        ],
    }
    write_atomic(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta
