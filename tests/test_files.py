"""The jobs' one atomic writer: whole files, a parent made, permissions as a plain open() gives."""

import os

from lm_eval_routed.jobs.files import write_atomic


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
