"""Per-run control groups: bound a sandboxed run's memory and task count as a whole, and end it all.

Each run gets its own cgroup below the harness's own one (or below ``ROUTED_SANDBOX_CGROUP``): memory
(every process of the run, and what it writes to its tmpfs, memfd or shared memory) and the number of
tasks are capped for the run as a whole, and when the run ends every task still in the group is
killed and the group removed. cgroup v2 is used when its ``memory`` and ``pids`` controllers are
available, else the v1 ``memory`` and ``pids`` hierarchies (root, or directories chowned to the user).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

CGROUP_ENV = "ROUTED_SANDBOX_CGROUP"
CONTROLLERS = ("memory", "pids")
_PREFIX = "routed-sbx-"

_counter_lock = threading.Lock()
_counter = [0]


class CgroupUnavailable(Exception):
    """No cgroup with memory and pids controllers this process may create groups in (one-line reason)."""


@dataclass(frozen=True)
class CgroupSetup:
    """Where run groups are made: one directory (v2) or one per controller hierarchy (v1)."""

    version: int
    parents: dict[str, str]  # controller -> parent directory (v2: the same directory for both)


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) of every cgroup mount."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, options = (right.split() + ["", "", ""])[:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((_unescape(left.split()[4]), fstype, set(options.split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's cgroup path in that hierarchy."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            for name in names.split(",") if names else [""]:
                paths[name] = path
    return paths


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _v2_parent(mount: str, own: str) -> str:
    """A v2 directory with memory and pids enabled for its children, or raise with the reason."""
    configured = os.environ.get(CGROUP_ENV, "")
    parent = configured or os.path.join(mount, own.lstrip("/"))
    if not os.path.isdir(parent):
        raise CgroupUnavailable(f"{CGROUP_ENV}={parent} is not a cgroup directory")
    available = set(_read(os.path.join(parent, "cgroup.controllers")).split())
    if not set(CONTROLLERS) <= available:
        raise CgroupUnavailable(
            f"cgroup v2 at {parent} offers {sorted(available) or 'no controllers'}, "
            "not memory and pids (delegate them to this cgroup)"
        )
    enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
    if set(CONTROLLERS) <= enabled:
        return parent
    try:
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
        return parent
    except OSError as err:
        if err.errno != errno.EBUSY or configured:
            raise CgroupUnavailable(
                f"cannot enable memory and pids in {parent}: {err.strerror}"
            ) from None
    # "No internal processes": a cgroup holding processes cannot hand controllers to children. When
    # this harness is alone in it, it moves into a leaf of its own and the parent becomes usable.
    procs = set(_read(os.path.join(parent, "cgroup.procs")).split())
    if procs != {str(os.getpid())}:
        raise CgroupUnavailable(
            f"{parent} holds other processes, so it cannot give memory and pids to run groups; run "
            f"the harness in a cgroup of its own (systemd-run --scope -p Delegate=yes ...) or set "
            f"{CGROUP_ENV} to an empty cgroup v2 directory this user can write"
        )
    leaf = os.path.join(parent, f"{_PREFIX}harness-{os.getpid()}")
    os.makedirs(leaf, exist_ok=True)
    _write(os.path.join(leaf, "cgroup.procs"), "0")
    _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
    return parent


def _v1_parents(mounts, own: dict[str, str]) -> dict[str, str]:
    configured = [p for p in os.environ.get(CGROUP_ENV, "").split(":") if p]
    parents = {}
    for name in CONTROLLERS:
        points = [m for m, fstype, opts in mounts if fstype == "cgroup" and name in opts]
        if not points:
            raise CgroupUnavailable(f"no {name} controller is mounted (cgroup v1 or v2)")
        if configured:
            marker = "memory.limit_in_bytes" if name == "memory" else "pids.max"
            found = [p for p in configured if os.path.exists(os.path.join(p, marker))]
            if not found:
                raise CgroupUnavailable(f"{CGROUP_ENV} names no cgroup v1 {name} directory")
            parents[name] = found[0]
        else:
            parents[name] = os.path.join(points[0], own.get(name, "/").lstrip("/"))
        if not os.access(parents[name], os.W_OK):
            raise CgroupUnavailable(
                f"cgroup v1 {name} directory {parents[name]} is not writable by this user (run as "
                f"root, chown a cgroup to this user and start the harness in it, or set {CGROUP_ENV})"
            )
    return parents


@lru_cache(maxsize=1)
def setup() -> CgroupSetup:
    """The cgroup layout run groups go into; raises :class:`CgroupUnavailable` with the reason."""
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as err:
        raise CgroupUnavailable(f"cannot read this process's cgroups: {err}") from None
    reasons = []
    for point, fstype, _ in mounts:
        if fstype == "cgroup2" and "" in own:
            try:
                parent = _v2_parent(point, own[""])
                _remove_stale(parent)
                return CgroupSetup(2, dict.fromkeys(CONTROLLERS, parent))
            except (CgroupUnavailable, OSError) as err:
                reasons.append(str(err))
    try:
        parents = _v1_parents(mounts, own)
    except (CgroupUnavailable, OSError) as err:
        reasons.append(str(err))
        raise CgroupUnavailable("; ".join(reasons)) from None
    for parent in set(parents.values()):
        _remove_stale(parent)
    return CgroupSetup(1, parents)


def _remove_stale(parent: str) -> None:
    # Groups left by a harness that was killed: empty once its runs died; removing them is tidy-up.
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            if name.startswith(_PREFIX) and not name.startswith(f"{_PREFIX}harness"):
                pid = name[len(_PREFIX) :].split("-")[0]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(parent, name))


class RunGroup:
    """The cgroup(s) of one run: created with its limits, joined by the launcher, emptied and removed."""

    def __init__(self, layout: CgroupSetup, memory_bytes: int, tasks: int):
        with _counter_lock:
            _counter[0] += 1
            name = f"{_PREFIX}{os.getpid()}-{_counter[0]}"
        self.version = layout.version
        self.dirs = {ctl: os.path.join(parent, name) for ctl, parent in layout.parents.items()}
        made = []
        try:
            for path in dict.fromkeys(self.dirs.values()):
                os.mkdir(path)
                made.append(path)
            self._limit(memory_bytes, tasks)
        except OSError:
            for path in made:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise

    def _limit(self, memory_bytes: int, tasks: int) -> None:
        mem, pids = self.dirs["memory"], self.dirs["pids"]
        if self.version == 2:
            _write(os.path.join(mem, "memory.max"), str(memory_bytes))
            with contextlib.suppress(FileNotFoundError):
                _write(os.path.join(mem, "memory.swap.max"), "0")
        else:
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: nothing to cap
                _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(memory_bytes))
        _write(os.path.join(pids, "pids.max"), str(tasks))

    @property
    def procs_files(self) -> list[str]:
        """The files the launcher writes itself into (every child it makes is then inside)."""
        return [os.path.join(d, "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def members(self) -> set[int]:
        """Pids (as this process sees them) still in the group."""
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in _read(path).split()}
        return found

    def memory_peak(self) -> int | None:
        """Peak memory of the run in bytes, where the kernel reports it."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int(_read(os.path.join(self.dirs["memory"], name)))
        except (OSError, ValueError):
            return None

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the run for going over the memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = _read(os.path.join(self.dirs["memory"], name))
        except OSError:
            return False
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0")) > 0

    def kill(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every task of the run and wait until none is left; True when the group is empty."""
        kill_file = os.path.join(self.dirs["pids"], "cgroup.kill")
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.members()
            if not left:
                return True
            if time.monotonic() > deadline:
                return False
            if self.version == 2 and os.path.exists(kill_file):
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
            else:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def remove(self) -> None:
        """Remove the group's directories (they must be empty of tasks)."""
        for path in dict.fromkeys(self.dirs.values()):
            for _ in range(200):  # a dying task leaves the group a moment after it is reaped
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY:
                        raise
                    time.sleep(0.005)
