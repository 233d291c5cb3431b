"""Label datasets of several prompt formats combine into one: responses kept apart, counts summed."""

from __future__ import annotations

import json

import pytest
import torch

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.training.common import load_shards, save_shard
from lm_eval_routed.training.r2r_combine import combine_labels
from lm_eval_routed.training.r2r_train import load_dataset, split_by_response

COUNTS = dict(queries=3, finished=3, unparseable=0, identical_continuations=1)


def _part(folder, responses: list[int], hidden: int = 4, top_k: int = 2, divergent: int = 1):
    """A label work folder whose dataset holds one row per entry of ``responses`` (its id)."""
    n = len(responses)
    label = torch.zeros(n)
    label[:divergent] = 1.0
    half = n // 2
    for i, part in enumerate((slice(0, half), slice(half, n))):  # two shards
        save_shard(
            folder / "dataset" / f"shard-{i:05d}.safetensors",
            {
                "hidden": torch.randn(n, hidden)[part],
                "topk": torch.randn(n, top_k)[part],
                "token": torch.arange(n)[part],
                "label": label[part],
                "mismatch": (label > 0)[part],
                "response": torch.tensor(responses)[part],
                "position": torch.arange(n)[part],
            },
        )
    meta = {
        **COUNTS,
        "tokens": n,
        "mismatches": divergent + 1,
        "divergent": divergent,
        "rows": n,
        "mismatch_rate": 0.0,
        "divergent_rate": 0.0,
        "slm": "demo:slm",
        "hidden_size": hidden,
        "vocab_size": 10,
        "top_k": top_k,
        "fingerprint": f"fp-{folder.name}",
    }
    (folder / "dataset" / "meta.json").write_text(json.dumps(meta))
    return folder


def test_combined_dataset_keeps_every_row_and_parts_responses_apart(tmp_path):
    a = _part(tmp_path / "short", [0, 0, 1, 2, 2, 2])
    b = _part(tmp_path / "worked", [0, 1, 1, 1], divergent=2)
    meta = combine_labels([a, b], tmp_path / "both")
    rows = load_shards(tmp_path / "both" / "dataset")
    first, second = load_shards(a / "dataset"), load_shards(b / "dataset")
    assert len(rows["label"]) == 10
    assert torch.equal(rows["hidden"], torch.cat([first["hidden"], second["hidden"]]))
    # the second part's responses are renumbered past the first's: 0 -> 3, 1 -> 4
    assert rows["response"].tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 4, 4]
    assert meta["rows"] == meta["tokens"] == 10 and meta["divergent"] == 3
    assert meta["queries"] == 6 and meta["mismatches"] == 5
    assert meta["divergent_rate"] == pytest.approx(0.3) and meta["mismatch_rate"] == 0.5
    assert [p["fingerprint"] for p in meta["parts"]] == ["fp-short", "fp-worked"]
    # what training reads: the same rows, and validation splits by whole (renumbered) responses
    data, read = load_dataset(tmp_path / "both")
    assert read == meta and data["label"].sum() == 3
    train, val = split_by_response(data, 0.4, 0)
    assert not set(train["response"].tolist()) & set(val["response"].tolist())


def test_combining_again_rewrites_rather_than_appends(tmp_path):
    a = _part(tmp_path / "a", [0, 1])
    b = _part(tmp_path / "b", [0, 1])
    combine_labels([a, b], tmp_path / "both")
    meta = combine_labels([a], tmp_path / "both")
    assert len(load_shards(tmp_path / "both" / "dataset")["label"]) == 2 == meta["rows"]


def test_parts_of_another_slm_or_top_k_are_refused_in_one_line(tmp_path):
    a = _part(tmp_path / "a", [0, 1])
    b = _part(tmp_path / "b", [0, 1], top_k=3)
    with pytest.raises(ConfigError, match="another top_k") as err:
        combine_labels([a, b], tmp_path / "both")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no R2R label dataset"):
        combine_labels([a, tmp_path / "missing"], tmp_path / "both")
    with pytest.raises(ConfigError, match="at least one"):
        combine_labels([], tmp_path / "both")
