"""Run untrusted programs (generated code) in a throw-away, resource-limited process.

Each run goes through a launcher, this very file run as a script (``python -I -S sandbox.py SPEC``),
so that the isolation happens after ``exec`` of a fresh interpreter and not in a ``preexec_fn`` (which
is unsafe with the harness's threads). The launcher, in order:

1. enters new PID, network and mount namespaces (plus a user namespace when not root; silently skipped
   where the kernel refuses — :func:`isolation` reports what took, and the harness logs it once);
2. in the PID namespace forks: the program becomes PID 1, so when it dies the kernel kills every
   process it left behind (``setsid`` cannot escape), and it gets SIGKILL if the launcher dies;
3. mounts size-limited tmpfs over ``/tmp``, ``/var/tmp``, ``/dev/shm`` and writes the program's files into
   a fresh working directory there (disk fills and stray writes land in memory that is freed at exit);
4. sets rlimits: CPU seconds, address space, file size, open files, processes, no core dumps;
5. when root, drops to a per-run unprivileged uid (RLIMIT_NPROC does not bind root, and an ordinary uid
   can write nowhere else on the host), then ``exec``\\ s the program with a scrubbed environment.

The harness starts the launcher in its own session and kills the whole process group on timeout.
stdout and stderr go to files, so a flood of output is cut by the file-size limit, not by our memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

_NEWNS, _NEWUSER, _NEWPID, _NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
_PR_SET_PDEATHSIG = 1
_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108  (world-writable dirs we hide behind tmpfs)
WORK = "/tmp/work"  # noqa: S108  (inside the private tmpfs; the host's /tmp is never touched)


# ---------------------------------------------------------------- launcher (runs as a bare script)


def _unshare(libc, flags: int) -> bool:
    return libc.unshare(flags) == 0


def _map_self(uid: int, gid: int) -> None:
    # A fresh user namespace maps no ids; map our own so files we create have an owner.
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _enter_namespaces(libc) -> list[str]:
    """Enter what the kernel allows, best first; return the names of what took."""
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() == 0 and _unshare(libc, _NEWPID | _NEWNET | _NEWNS):
        return ["pid", "net", "mnt"]
    if _unshare(libc, _NEWUSER | _NEWPID | _NEWNET | _NEWNS):
        _map_self(uid, gid)
        return ["user", "pid", "net", "mnt"]
    if _unshare(libc, _NEWUSER | _NEWNET):
        _map_self(uid, gid)
        return ["user", "net"]
    return []


def _become_init(libc) -> None:
    """Fork into the new PID namespace; the launcher waits and mirrors the program's exit."""
    pid = os.fork()
    if pid:
        # Signals aimed at the launcher (the harness's group kill) must also end the program.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: os._exit(137))
        _, status = os.waitpid(pid, 0)
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _mount_scratch(libc, size_mb: int) -> bool:
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    opts = f"size={size_mb}m,mode=1777".encode()
    ok = True
    for path in _SCRATCH:
        if os.path.isdir(path):
            ok &= libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts) == 0
    # A fresh /proc shows only this namespace's processes (no host pids to read or signal).
    libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV, None)
    return ok


def _set_limits(limits: dict) -> None:
    import resource

    mb = 1024 * 1024
    pairs = {
        resource.RLIMIT_CPU: limits["cpu_s"],
        resource.RLIMIT_AS: limits["memory_mb"] * mb,
        resource.RLIMIT_FSIZE: limits["file_mb"] * mb,
        resource.RLIMIT_NOFILE: limits["nofile"],
        resource.RLIMIT_CORE: 0,
    }
    if limits.get("nproc"):
        pairs[resource.RLIMIT_NPROC] = limits["nproc"]
    for key, value in pairs.items():
        resource.setrlimit(key, (value, value))


def _launcher_main(spec_path: str) -> None:
    """Isolate, limit, drop privileges and exec the program described by the spec file."""
    import ctypes

    with open(spec_path) as f:
        spec = json.load(f)  # read now: the tmpfs mounts below hide the host's /tmp
    libc = ctypes.CDLL(None, use_errno=True)
    got = _enter_namespaces(libc) if spec["isolate"] else []
    if "pid" in got:
        _become_init(libc)
    work = (
        WORK if "mnt" in got and _mount_scratch(libc, spec["limits"]["file_mb"]) else spec["work"]
    )
    os.makedirs(work, exist_ok=True)
    for name, text in spec["files"].items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    if spec["report"]:
        print(json.dumps({"isolation": got, "uid": os.getuid()}), file=sys.stderr, flush=True)
    os.chdir(work)
    # Limits go on before the drop: `resource` may live where the new uid cannot read.
    _set_limits(spec["limits"])
    if os.geteuid() == 0 and spec["uid"]:
        os.chown(work, spec["uid"], spec["uid"])
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
    argv = [a.replace("{work}", work) for a in spec["argv"]]
    os.execve(argv[0], argv, spec["env"])  # noqa: S606  (argv is ours: the interpreter + a file)


# ---------------------------------------------------------------- harness side

logger = logging.getLogger(__name__)

_UID_BASE = 200_000
_uid_lock = threading.Lock()
_uid_next = [0]


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits; ``wall_s`` is the per-test time limit (6 s as in LiveCodeBench)."""

    wall_s: float = 6.0
    memory_mb: int = 1024
    file_mb: int = 64
    nproc: int = 64
    nofile: int = 128
    stderr_tail: int = 2000

    def __post_init__(self):
        if self.wall_s <= 0 or self.memory_mb < 64 or self.file_mb < 1 or self.nproc < 1:
            raise ValueError(
                f"sandbox limits out of range: {self}; need wall_s > 0, memory_mb >= 64, "
                "file_mb >= 1, nproc >= 1"
            )


@dataclass(frozen=True)
class RunResult:
    """What one sandboxed run did: its exit, its output and whether it ran out of time."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float

    @property
    def ok(self) -> bool:
        """Exited 0 within the time limit."""
        return self.returncode == 0 and not self.timed_out


def _world_reachable(path: str) -> bool:
    # An unprivileged uid needs o+x on every directory above the file, and o+rx on the file.
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    dirs = [os.sep + os.path.join(*parts[1:i]) for i in range(2, len(parts))]
    try:
        ok_dirs = all(os.stat(d).st_mode & 0o001 for d in dirs)
        return ok_dirs and (os.stat(real).st_mode & 0o005) == 0o005
    except OSError:
        return False


@lru_cache(maxsize=1)
def program_python() -> str:
    """The interpreter that runs sandboxed programs: ours, or (as root) one the dropped uid can reach."""
    if os.geteuid() != 0 or _world_reachable(sys.executable):
        return sys.executable
    for candidate in (shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3"):
        if candidate and _world_reachable(candidate) and _works_as_other(candidate):
            logger.info(
                "sandbox: programs run with %s (ours is not reachable by other users)", candidate
            )
            return candidate
    raise RuntimeError(
        f"sandbox: running as root and {sys.executable} is not readable by other users; install "
        "a python3 under /usr/bin or make the interpreter world-readable"
    )


def _works_as_other(python: str) -> bool:
    res = run_sandboxed({}, [python, "-c", "import json, math"], limits=Limits(wall_s=10))
    return res.ok


def _next_uid() -> int:
    # Each run gets its own uid so process counts (RLIMIT_NPROC) of parallel runs never mix.
    with _uid_lock:
        _uid_next[0] = (_uid_next[0] + 1) % 50_000
        return _UID_BASE + (os.getpid() % 1000) * 50_000 + _uid_next[0]


def _scrubbed_env() -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": WORK,
        "TMPDIR": WORK,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def _nproc_limit(limits: Limits) -> int:
    if os.geteuid() == 0:
        return limits.nproc  # counted for the fresh uid alone
    # Unprivileged: the count is per user, so leave room for the processes the user already has.
    mine = sum(1 for p in os.listdir("/proc") if p.isdigit() and _owned(p))
    return mine + limits.nproc


def _owned(pid: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def _spec(files: dict[str, str], argv: list[str], limits: Limits, io: str, report: bool) -> dict:
    return {
        "files": files,
        "argv": argv,
        "work": os.path.join(io, "work"),
        "uid": _next_uid() if os.geteuid() == 0 else 0,
        "isolate": True,
        "report": report,
        "env": _scrubbed_env(),
        "limits": {
            "cpu_s": math.ceil(limits.wall_s) + 1,
            "memory_mb": limits.memory_mb,
            "file_mb": limits.file_mb,
            "nofile": limits.nofile,
            "nproc": _nproc_limit(limits),
        },
    }


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: str, limit: int) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - limit))
        return f.read().decode("utf-8", "replace")


def run_sandboxed(
    files: dict[str, str],
    argv: list[str],
    stdin: str = "",
    limits: Limits | None = None,
    report: bool = False,
) -> RunResult:
    """Write ``files`` into a fresh working dir and run ``argv`` there under the sandbox.

    ``{work}`` in ``argv`` is replaced by the working directory's path inside the sandbox.
    """
    limits = limits or Limits()
    with tempfile.TemporaryDirectory(prefix="routed-sbx-") as io:
        spec_path = os.path.join(io, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(_spec(files, argv, limits, io, report), f)
        os.makedirs(os.path.join(io, "work"))
        os.chmod(io, 0o711)  # noqa: S103  (traverse only: the dropped uid reaches the fallback work dir)
        out_path, err_path = os.path.join(io, "stdout"), os.path.join(io, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__), spec_path]
            result = _wait(cmd, stdin, out, err, limits)
        # stdout is bounded by RLIMIT_FSIZE, so reading it whole is safe
        with open(out_path, "rb") as f:
            stdout = f.read().decode("utf-8", "replace")
        return RunResult(
            returncode=result[0],
            stdout=stdout,
            stderr=_tail(err_path, limits.stderr_tail),
            timed_out=result[1],
            wall_s=result[2],
        )


def _wait(cmd, stdin: str, out, err, limits: Limits) -> tuple[int, bool, float]:
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=err,
        start_new_session=True,  # its own process group, so the timeout kill reaches everything
        env=_scrubbed_env(),
        close_fds=True,
    )
    timed_out = False
    try:
        proc.communicate(stdin.encode(), timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    except BrokenPipeError:
        pass  # the program exited without reading its input
    finally:
        _kill_group(proc)  # on timeout, and to reap anything left in the group after an exit
        proc.wait()
    return proc.returncode, timed_out, time.monotonic() - start


@lru_cache(maxsize=1)
def isolation() -> tuple[str, ...]:
    """Which namespaces the launcher manages to enter here (``pid``, ``net``, ``mnt``, ``user``)."""
    res = run_sandboxed({}, [program_python(), "-c", "pass"], report=True)
    try:
        got = tuple(json.loads(res.stderr.splitlines()[0])["isolation"])
    except (IndexError, ValueError, KeyError):
        got = ()
    missing = {"pid", "net", "mnt"} - set(got)
    if missing:
        logger.warning(
            "sandbox: the kernel refused %s namespaces; programs run with rlimits only for those "
            "(see lm_eval_routed/evals/sandbox.py)",
            ", ".join(sorted(missing)),
        )
    return got


if __name__ == "__main__":
    _launcher_main(sys.argv[1])
    sys.exit(127)
