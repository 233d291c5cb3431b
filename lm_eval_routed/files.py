"""Writing files so that nothing computed is lost: whole-or-absent writes, and JSONL appends.

A leaf (it imports nothing of the package): the jobs, the adapters and the trainers all write here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def save_atomic(path: Path, save: Callable[[Path], None]) -> None:
    """Have ``save`` write a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: a reader (or a run resumed after a kill) sees the old file or the new, never half.
    What a writer killed before its rename left beside ``path`` is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it, not mkstemp's 0600
        save(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write text or bytes to ``path`` whole or not at all (``save_atomic``)."""
    data = content.encode() if isinstance(content, str) else content
    save_atomic(path, lambda tmp: tmp.write_bytes(data))


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per row and flush, so an interrupted run keeps what it wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
    with path.open("a") as fh:
        fh.write(lines)
        fh.flush()
