"""The one atomic writer and the one JSONL append: whole files, a parent made, permissions as a plain
open() gives, and a writer that fails leaves the old file."""

import json
import os

import pytest
import torch

from lm_eval_routed.files import append_jsonl, save_atomic, write_atomic


def test_write_atomic_makes_the_folder_and_writes_text_or_bytes(tmp_path):
    path = tmp_path / "deep" / "er" / "out.md"
    write_atomic(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    write_atomic(path, b"\x89PNG")
    assert path.read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.md"]  # no temporary left


def test_write_atomic_gives_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.json", "{}")
        (tmp_path / "b.json").write_text("{}")
    finally:
        os.umask(old)
    mode = (tmp_path / "a.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_a_save_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"step": 1}, path)

    def half(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_atomic(path, half)
    assert torch.load(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    save_atomic(path, lambda tmp: torch.save({"step": 2}, tmp))  # a writer that takes a path
    assert torch.load(path) == {"step": 2}


def test_append_jsonl_adds_whole_lines_after_what_is_there(tmp_path):
    path = tmp_path / "new" / "records.jsonl"
    append_jsonl(path, [{"a": 1}])
    append_jsonl(path, [{"b": [1, 2]}, {"c": "é"}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"a": 1},
        {"b": [1, 2]},
        {"c": "é"},
    ]
