"""Run untrusted programs (generated code) in a throw-away, isolated, resource-limited process tree.

The harness side: limits, the filesystem view a run gets, the per-run cgroup, bounded capture of
stdout and stderr, and the stop that leaves no process of the run behind. The isolation itself
happens in the launcher, :mod:`lm_eval_routed.evals.isolation`, run as a bare script per run.

Isolation is all or nothing: where the kernel refuses a layer (user, PID, mount, network, IPC, UTS
or cgroup namespace, the read-only root, the per-run cgroup), :class:`SandboxUnavailable` says what is
missing and how to allow it, unless ``ROUTED_SANDBOX_ALLOW_WEAK=1`` opts into running with what there
is; every :class:`RunResult` records the isolation that was in force. See tasks/README.md.
"""

from __future__ import annotations

import logging
import marshal
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from functools import lru_cache

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.evals import capture, cgroups
from lm_eval_routed.evals import isolation as launcher
from lm_eval_routed.evals.rootfs import mount_plan, program_python

logger = logging.getLogger(__name__)

ALLOW_WEAK_ENV = "ROUTED_SANDBOX_ALLOW_WEAK"
MAX_WALL_S = 86_400.0
MB = 1024 * 1024
_LAUNCHER_MB = 48  # the launcher and init count against the run's cgroup too
_LAUNCHER_TASKS = 2
_UID_BASE = 200_000
_UIDS_PER_HARNESS = 50_000

# layer -> (what it is, how to get it); namespaces not listed are "a <name> namespace"
_LAYERS = {
    "user": (
        "a user namespace",
        "unprivileged user namespaces are off: allow them (sysctl user.max_user_namespaces=15000, "
        "and where present kernel.unprivileged_userns_clone=1 or "
        "kernel.apparmor_restrict_unprivileged_userns=0) or run as root",
    ),
    "root": ("a read-only root", "tmpfs, bind mounts or pivot_root were refused"),
    "keyring": ("a fresh session keyring", "keyctl was refused"),
    "cgroup": ("a per-run cgroup", ""),
}


class SandboxUnavailable(ConfigError):
    """The kernel refused an isolation layer and weaker isolation was not opted into (one line)."""


class SandboxError(RuntimeError):
    """The launcher failed in a way no program can cause (a bug or a broken host)."""


def _whole(limits: Limits, name: str, low: int, high: int) -> None:
    value = getattr(limits, name)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and float(value).is_integer() and low <= value <= high):
        raise ValueError(
            f"sandbox limits: {name} must be a whole number in [{low}, {high}], got {value!r}"
        )
    object.__setattr__(limits, name, int(value))  # 2.0 is 2: rlimits take integers


@dataclass(frozen=True)
class Limits:
    """Per-run limits. ``wall_s``: the per-test time limit (6 s as in LiveCodeBench); ``memory_mb``:
    each process's address space and the whole run's memory (files it writes in memory included);
    ``file_mb``: one file, and each of the run's ``/tmp`` and ``/dev/shm``; ``output_mb``: stdout and
    stderr each (more stops the run with ``output_limit``)."""

    wall_s: float = 6.0
    memory_mb: int = 1024
    file_mb: int = 64
    output_mb: int = 8
    nproc: int = 64
    nofile: int = 128
    stderr_tail: int = 2000

    def __post_init__(self):
        if not (
            isinstance(self.wall_s, (int, float)) and not isinstance(self.wall_s, bool)
        ) or not (math.isfinite(self.wall_s) and 0 < self.wall_s <= MAX_WALL_S):
            raise ValueError(
                f"sandbox limits: wall_s must be a finite number of seconds in (0, {MAX_WALL_S:g}], "
                f"got {self.wall_s!r}"
            )
        _whole(self, "memory_mb", 64, 1 << 20)
        _whole(self, "file_mb", 1, 1 << 20)
        _whole(self, "output_mb", 1, 1 << 12)
        _whole(self, "nproc", 1, 1 << 15)
        _whole(self, "nofile", 16, 1 << 20)
        _whole(self, "stderr_tail", 0, 1 << 24)


@dataclass(frozen=True)
class Isolation:
    """Which isolation layers were in force for a run, and which the kernel refused (name -> why)."""

    layers: tuple[str, ...]
    missing: tuple[tuple[str, str], ...] = ()

    @property
    def full(self) -> bool:
        """Every layer took."""
        return not self.missing

    @property
    def label(self) -> str:
        """``full``, or ``weak (missing: ...)`` when weaker isolation was opted into."""
        return "full" if self.full else f"weak (missing: {', '.join(n for n, _ in self.missing)})"


@dataclass(frozen=True)
class RunResult:
    """What one sandboxed run did: exit (negative: killed by that signal), output, and why it stopped."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    output_limit: bool = False  # stdout or stderr went over Limits.output_mb: the run was stopped
    isolation: Isolation = Isolation(())
    memory_peak_mb: float | None = None  # the whole run's peak, where cgroups report it
    oom_killed: bool = False  # the kernel killed a process of the run at the memory limit

    @property
    def ok(self) -> bool:
        """Exited 0 within the time and output limits."""
        return self.returncode == 0 and not self.timed_out and not self.output_limit


# ---------------------------------------------------------------- one run

_uid_lock = threading.Lock()
_uid_next = [0]


def uid_range(pid: int | None = None) -> range:
    """The per-run uids a harness process (root) gives its programs."""
    first = _UID_BASE + ((os.getpid() if pid is None else pid) % 1000) * _UIDS_PER_HARNESS
    return range(first, first + _UIDS_PER_HARNESS)


def _next_uid() -> int:
    # Each run gets its own uid so process counts (RLIMIT_NPROC) of parallel runs never mix.
    with _uid_lock:
        _uid_next[0] = (_uid_next[0] + 1) % _UIDS_PER_HARNESS
        return uid_range()[_uid_next[0]]


@lru_cache(maxsize=1)
def _root_of_initial_namespace() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def _scrubbed_env() -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": launcher.WORK,
        "TMPDIR": launcher.WORK,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        # one thread per numeric library: runs go in parallel, and threads count against nproc
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def allow_weak() -> bool:
    """Whether ``ROUTED_SANDBOX_ALLOW_WEAK=1`` opts into running with layers the kernel refused."""
    value = os.environ.get(ALLOW_WEAK_ENV, "")
    if value not in ("", "0", "1"):
        raise ConfigError(
            f"{ALLOW_WEAK_ENV} must be 1 (run with weaker isolation) or unset, got {value!r}"
        )
    return value == "1"


def _refusal(missing: dict[str, str]) -> SandboxUnavailable:
    parts = []
    for name, why in missing.items():
        what, how = _LAYERS.get(
            name, (f"a {name} namespace", "the kernel or a container's seccomp policy refuses it")
        )
        parts.append(f"{what} ({why}{': ' + how if how else ''})")
    return SandboxUnavailable(
        "sandbox: refusing to run untrusted code without "
        + "; ".join(parts)
        + f"; set {ALLOW_WEAK_ENV}=1 to run it with weaker isolation (recorded in every result)"
    )


def run_sandboxed(
    files: dict[str, str], argv: list[str], stdin: str = "", limits: Limits | None = None
) -> RunResult:
    """Write ``files`` into a fresh working dir and run ``argv`` there under the sandbox.

    ``{work}`` in ``argv`` is replaced by the working directory's path inside the sandbox. Raises
    :class:`SandboxUnavailable` where isolation is incomplete and weaker isolation was not opted into.
    """
    bad = [n for n in files if os.path.basename(n) != n or n in ("", ".", "..")]
    if bad:
        raise ValueError(f"sandbox: file names must be plain names in the working dir, got {bad}")
    isolation()
    return _run(files, argv, stdin, limits or Limits())


def _run(files: dict[str, str], argv: list[str], stdin: str, limits: Limits) -> RunResult:
    weak = allow_weak()
    missing: dict[str, str] = {}
    group = None
    try:
        group = cgroups.RunGroup(
            cgroups.setup(), (limits.memory_mb + _LAUNCHER_MB) * MB, limits.nproc + _LAUNCHER_TASKS
        )
    except (cgroups.CgroupUnavailable, OSError) as err:
        missing["cgroup"] = str(err)
        if not weak:
            raise _refusal(missing) from None
    try:
        with tempfile.TemporaryDirectory(prefix="routed-sbx-") as io:
            result = _launch(files, argv, stdin, limits, io, group, weak)
    finally:
        if group is not None:
            group.kill()
            group.remove()
    if missing:
        layers, refused = result.isolation.layers, dict(result.isolation.missing)
        result = replace(result, isolation=Isolation(layers, tuple({**missing, **refused}.items())))
    return result


def _spec(files, argv, limits: Limits, io: str, group, weak: bool, status_fd: int) -> dict:
    root = _root_of_initial_namespace()
    return {
        "files": files,
        "argv": argv,
        "env": _scrubbed_env(),
        "work": os.path.join(io, "work"),
        "root": os.path.join(io, "root"),
        "mounts": list(mount_plan(argv[0])) if os.path.isabs(argv[0]) else [],
        "uid": _next_uid() if root else None,
        "allow_weak": weak,
        "status_fd": status_fd,
        "harness_pid": os.getpid(),
        "cgroup_procs": group.procs_files if group is not None else [],
        "limits": {
            "cpu_s": math.ceil(limits.wall_s) + 1,
            "memory_mb": limits.memory_mb,
            "file_mb": limits.file_mb,
            "nofile": limits.nofile,
            # a per-run uid counts alone; in a user namespace so do the launcher and init
            "nproc": limits.nproc + (0 if root else _LAUNCHER_TASKS),
        },
    }


def _launch(files, argv, stdin: str, limits: Limits, io: str, group, weak: bool) -> RunResult:
    os.makedirs(os.path.join(io, "root"))
    os.makedirs(os.path.join(io, "work"))
    os.chmod(io, 0o711)  # noqa: S103  (traverse only: a weak run's uid reaches its work dir)
    status_r, status_w = os.pipe()
    try:
        spec_path = os.path.join(io, "spec")
        with open(spec_path, "wb") as f:  # marshal: the launcher reads it without importing json
            marshal.dump(_spec(files, argv, limits, io, group, weak, status_w), f)
        start = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603  (our launcher, our interpreter)
            [sys.executable, "-I", "-S", os.path.abspath(launcher.__file__), spec_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            start_new_session=True,
            env=_scrubbed_env(),
        )
        os.close(status_w)
        status_w = -1
        try:
            cap = capture.pump(
                proc,
                stdin.encode(),
                start + limits.wall_s,
                limits.output_mb * MB,
                max(4 * limits.stderr_tail, 4096),  # bytes enough for the tail in characters
            )
        finally:
            capture.stop(proc, group)
        wall = time.monotonic() - start
        report = capture.read_status(status_r)
    finally:
        os.close(status_r)
        if status_w >= 0:
            os.close(status_w)
    if "error" in report:
        raise SandboxError(f"sandbox: the launcher failed: {report['error']}")
    if report.get("refused"):
        raise _refusal(report["missing"])
    iso = Isolation(tuple(report.get("layers", ())), tuple(report.get("missing", {}).items()))
    if "status" in report and not (cap.timed_out or cap.output_limit):
        st = report["status"]
        code = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
    else:
        code = -signal.SIGKILL  # stopped by us, or by the kernel's OOM killer
    peak = group.memory_peak() if group is not None else None
    return RunResult(
        returncode=code,
        stdout=cap.stdout.decode("utf-8", "replace"),
        stderr=cap.stderr[-limits.stderr_tail :].decode("utf-8", "replace")
        if limits.stderr_tail
        else "",
        timed_out=cap.timed_out,
        wall_s=wall,
        output_limit=cap.output_limit,
        isolation=iso,
        memory_peak_mb=None if peak is None else peak / MB,
        oom_killed=group.oom_killed() if group is not None else False,
    )


# ---------------------------------------------------------------- the probe

_warned: set[str] = set()


@lru_cache(maxsize=2)
def _probe(weak: bool) -> Isolation:
    res = _run({}, [program_python(), "-c", "import json, math"], "", Limits(wall_s=30))
    if not res.ok:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise SandboxUnavailable(
            f"sandbox: {program_python()} does not start inside the sandbox ({last}); its "
            "installation must be readable by other users"
        )
    return res.isolation


def isolation() -> Isolation:
    """The isolation runs get here (probed once); raises :class:`SandboxUnavailable` if refused."""
    iso = _probe(allow_weak())
    if not iso.full and iso.label not in _warned:
        _warned.add(iso.label)
        logger.warning(
            "sandbox: running untrusted code with %s isolation (%s=1)", iso.label, ALLOW_WEAK_ENV
        )
    return iso
