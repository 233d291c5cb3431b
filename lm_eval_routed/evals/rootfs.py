"""What a sandboxed run can see: the interpreter, its libraries and a few system files, bound read-only.

The plan is computed once per interpreter on the harness side; the launcher
(:mod:`lm_eval_routed.evals.isolation`) mounts it onto an empty tmpfs root and pivots into it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import subprocess
import sys
from functools import lru_cache

# Library directories every interpreter needs (libc, libffi, libssl, ...): code, no user data.
_LIB_DIRS = (
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/usr/lib",
    "/usr/lib64",
    "/usr/lib32",
    "/usr/libx32",
    "/usr/local/lib",
)
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")
_SHARED_PREFIXES = ("/", "/usr", "/usr/local")  # never bound whole: they hold far more than Python


def program_python() -> str:
    """The interpreter that runs sandboxed programs: ours, bound read-only into each run's root."""
    return sys.executable


class _MountPlan:
    """Paths a run's root holds: read-only binds, symlinks that lead to them, masked files."""

    def __init__(self):
        self.binds: dict[str, str] = {}  # path -> "dir" | "file"
        self.links: dict[str, str] = {}
        self.masks: set[str] = set()

    def covered(self, path: str) -> bool:
        return any(path == b or path.startswith(b.rstrip("/") + "/") for b in self.binds)

    def add(self, path: str, depth: int = 0) -> None:
        """Make ``path`` resolve in the run's root as it does on the host (following symlinks)."""
        path = os.path.normpath(path)
        if depth > 40 or self.covered(path) or not os.path.lexists(path):
            return
        parts = path.strip("/").split("/")
        for i in range(len(parts)):
            cur = "/" + "/".join(parts[: i + 1])
            if self.covered(cur):
                return
            if os.path.islink(cur):
                target = os.readlink(cur)
                self.links[cur] = target
                rest = parts[i + 1 :]
                self.add(os.path.join(os.path.dirname(cur), target, *rest), depth + 1)
                return
        kind = "dir" if os.path.isdir(path) else "file"
        self.binds = {b: k for b, k in self.binds.items() if not b.startswith(path + "/")}
        self.links = {p: t for p, t in self.links.items() if not p.startswith(path + "/")}
        self.binds[path] = kind

    def entries(self) -> list[dict]:
        rows = [{"path": p, "kind": "link", "target": t} for p, t in self.links.items()]
        rows += [{"path": p, "kind": k} for p, k in self.binds.items()]
        rows += [{"path": p, "kind": "mask"} for p in self.masks]
        # parents before children, masks after the bind they sit in
        return sorted(rows, key=lambda r: (r["path"].count("/"), r["kind"] == "mask", r["path"]))


@lru_cache(maxsize=4)
def _interpreter(python: str) -> dict:
    code = (
        "import json, sys; print(json.dumps({'prefixes': [sys.prefix, sys.base_prefix, "
        "sys.exec_prefix, sys.base_exec_prefix], 'path': sys.path}))"
    )
    try:
        out = subprocess.run(  # noqa: S603  (our own interpreter, on the host, before any run)
            [python, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"prefixes": [], "path": []}  # not a Python: the program and its libraries only


@lru_cache(maxsize=4)
def mount_plan(python: str) -> tuple[dict, ...]:
    """The run's root for ``python``: its prefixes, its import path, system libraries, devices."""
    info = _interpreter(python)
    plan = _MountPlan()
    for d in _LIB_DIRS:
        plan.add(d)
    for prefix in dict.fromkeys(info["prefixes"]):
        if os.path.normpath(prefix) not in _SHARED_PREFIXES:
            plan.add(prefix)
    allowed = [os.path.realpath(p) for p in [*info["prefixes"], *_LIB_DIRS] if os.path.exists(p)]
    for entry in info["path"]:
        real = os.path.realpath(entry) if entry else ""
        # Only what the interpreter installs: a source checkout on the path (an editable install)
        # stays outside the sandbox.
        if real and any(real == a or real.startswith(a.rstrip("/") + "/") for a in allowed):
            plan.add(entry)
    hop = python
    for _ in range(40):  # the interpreter and every symlink leading to it
        plan.add(hop)
        if not os.path.islink(hop):
            break
        hop = os.path.join(os.path.dirname(hop), os.readlink(hop))
    for path in _ETC_FILES:
        plan.add(path)
    package = __name__.split(".")[0]
    for entry in info["path"]:  # this project's start-up hook imports a package the run lacks
        for pth in glob.glob(os.path.join(entry, "*.pth")) if plan.covered(entry) else []:
            with contextlib.suppress(OSError), open(pth, "rb") as f:
                if package.encode() in f.read():
                    plan.masks.add(pth)
    return tuple(plan.entries())
