"""The sandbox launcher: isolates one run, then execs the untrusted program inside it.

The harness runs this file as a bare script (``python -I -S isolation.py SPEC``) so that isolation
happens in a fresh single-threaded interpreter, never in a ``preexec_fn`` of the multi-threaded harness.
It reports on a status pipe (one ``repr``'d dict a line): the layers that took, those the kernel
refused (the harness refuses the run unless weaker isolation was opted into) and at the end the
program's wait status.

Process tree, outermost first:

* launcher: joins the run's cgroup, enters the namespaces (a user namespace first when it is not root
  in the initial one), forks init, relays a stop request (SIGTERM) as SIGKILL to init, waits for it;
* init (PID 1 of the run's PID namespace, stays privileged, not ptrace-able): builds a read-only
  root of bind mounts (interpreter, its libraries, a few devices, a fresh ``/proc``, tmpfs ``/tmp``
  and ``/dev/shm``), ``pivot_root``\\ s into it, joins a fresh session keyring, forks the program
  and waits for it; when it exits, the kernel kills every process left in the namespace (``setsid``
  or double forks cannot escape);
* program: rlimits, no capabilities (bounding set dropped, ``SECBIT_NOROOT``, no new privileges), an
  unprivileged uid (a per-run one when the harness is root, else the caller's, mapped), then ``exec``.
"""

# Imports are the launcher's start-up cost on every run: no json, enum-based signal, platform.
import _signal as signal
import ctypes
import marshal
import os
import resource  # imported now: after pivot_root the launcher's own library may be gone
import sys

CLONE = {
    "user": 0x10000000,
    "mount": 0x00020000,
    "pid": 0x20000000,
    "net": 0x40000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "cgroupns": 0x02000000,
}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 0x400, 0x800, 0x1000, 0x2000, 0x4000
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 0x40000, 0x200000, 0x1000000
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 4, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
# NOROOT (+lock): uid 0 gains no capabilities at exec; the other locks keep setuid and ambient
# fix-ups in force.
SECUREBITS = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}
KEYCTL_JOIN_SESSION_KEYRING = 1
SANDBOX_ID = 1000  # the program's uid and gid inside a user namespace (the caller's ids outside)
DEVICES = ("null", "zero", "full", "random", "urandom")
STDIO_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1"}
STDIO_LINKS["stderr"] = "/proc/self/fd/2"
WORK = "/tmp/work"  # noqa: S108  (inside the run's own tmpfs)

libc = ctypes.CDLL(None, use_errno=True)
_init_pid = [0]


def _bytes(text):
    return None if text is None else os.fsencode(text)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int = 0) -> int:
    c = ctypes.c_ulong
    return libc.prctl(ctypes.c_int(option), c(arg), c(0), c(0), c(0))


def _mount(src, dst, fstype, flags: int, data=None) -> None:
    ret = libc.mount(_bytes(src), _bytes(dst), _bytes(fstype), ctypes.c_ulong(flags), _bytes(data))
    _check(ret, f"mount {dst}")


class Status:
    """The channel to the harness, one literal dict a line (closed before the program runs)."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, **msg) -> None:
        os.write(self.fd, (repr(msg) + "\n").encode())


# ---------------------------------------------------------------- launcher


def _enter_namespaces(spec: dict, layers: list, missing: dict) -> None:
    for path in spec["cgroup_procs"]:  # before any namespace: the files are the host's
        try:
            with open(path, "w") as f:
                f.write("0")
        except OSError as err:
            missing["cgroup"] = f"joining {path}: {err.strerror}"
    if spec["cgroup_procs"] and "cgroup" not in missing:
        layers.append("cgroup")
    if spec["uid"] is None:  # not root of the initial namespace: a user namespace gives the rest
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(CLONE["user"]) == 0:
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{SANDBOX_ID} {uid} 1"),
                ("gid_map", f"{SANDBOX_ID} {gid} 1"),
            ):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            layers.append("user")
        else:
            missing["user"] = os.strerror(ctypes.get_errno())
    else:
        layers.append("uid")
    for name in ("mount", "pid", "net", "ipc", "uts", "cgroupns"):
        if libc.unshare(CLONE[name]) == 0:
            layers.append(name)
        else:
            missing[name] = os.strerror(ctypes.get_errno())
    if "uts" in layers:
        libc.sethostname(b"sandbox", 7)


def _stop_init(*_) -> None:
    if _init_pid[0]:
        try:  # noqa: SIM105  (contextlib costs the launcher start-up time)
            os.kill(_init_pid[0], signal.SIGKILL)
        except ProcessLookupError:
            pass


def _die_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def launch(spec: dict) -> None:
    """Launcher: cgroup, namespaces, then init (forked into the PID namespace, or this process)."""
    os.umask(0o022)
    _die_with_parent()
    if os.getppid() != spec["harness_pid"]:
        os._exit(1)  # the harness died before the death signal was armed
    status = Status(spec["status_fd"])
    layers, missing = [], {}
    _enter_namespaces(spec, layers, missing)
    _prctl(PR_SET_DUMPABLE, 0)  # after the id maps: a non-dumpable process cannot write its own
    if "pid" not in layers:
        _init(spec, status, layers, missing)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop_init)  # before the fork: a stop request must never be lost
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        _init(spec, status, layers, missing)
    _init_pid[0] = pid
    _quiet_stdio()
    # init's exit makes the kernel kill the whole namespace; waitpid returns once all of it is gone.
    while True:
        try:
            os.waitpid(pid, 0)
            break
        except ChildProcessError:
            break
    os._exit(0)


def _quiet_stdio() -> None:
    # Our copies of the program's pipes would keep them open after the program is gone.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


# ---------------------------------------------------------------- init


def _init(spec: dict, status: Status, layers: list, missing: dict) -> None:
    _prctl(PR_SET_DUMPABLE, 0)  # the program shares init's uid in a user namespace: no ptrace
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no KeyboardInterrupt a program could send
    work = spec["work"]
    if "mount" in layers:
        try:
            work = _build_root(spec, proc="pid" in layers, layers=layers)
            layers.append("root")
        except OSError as err:
            missing["root"] = str(err)
    else:
        missing["root"] = "needs a mount namespace"
    # The session keyring is inherited: the harness's keys would be the program's to read.
    number = KEYCTL.get(os.uname().machine)
    if number is not None and libc.syscall(number, KEYCTL_JOIN_SESSION_KEYRING, None) > 0:
        layers.append("keyring")
    else:
        missing["keyring"] = "cannot detach the session keyring on this architecture"
    refused = bool(missing) and not spec["allow_weak"]
    status.send(layers=layers, missing=missing, refused=refused)
    if refused:
        os._exit(0)
    if "root" not in layers:
        _write_files(spec, work)
    pid = os.fork()
    if pid == 0:
        _exec_program(spec, work, status)
    _quiet_stdio()
    while True:
        got, wait_status = os.waitpid(-1, 0)
        if got == pid:
            break
    status.send(status=wait_status)
    os._exit(0)


def _write_files(spec: dict, work: str) -> None:
    os.makedirs(work, mode=0o700, exist_ok=True)
    for name, text in spec["files"].items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    if spec["uid"] is not None:
        for path in [work] + [os.path.join(work, n) for n in spec["files"]]:
            os.chown(path, spec["uid"], spec["uid"])


def _locked_flags(path: str) -> int:
    # Inside a user namespace a bind mount must keep the source mount's nosuid/nodev/noexec/atime.
    st = os.statvfs(path).f_flag
    flags = 0
    for st_bit, ms_bit in ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1, MS_RDONLY)):
        if st & st_bit:
            flags |= ms_bit
    if st & 1024:
        flags |= MS_NOATIME
    elif st & 4096:
        flags |= MS_RELATIME
    else:
        flags |= MS_STRICTATIME
    if st & 2048:
        flags |= MS_NODIRATIME
    return flags


def _bind(src: str, dst: str, is_dir: bool, extra: int, create: bool = True) -> None:
    if create:
        if is_dir:
            os.makedirs(dst, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
            if not os.path.exists(dst):
                os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644))
    try:
        _mount(src, dst, None, MS_BIND)
    except OSError:
        _mount(src, dst, None, MS_BIND | MS_REC)  # locked submounts must come along
    _mount(None, dst, None, MS_BIND | MS_REMOUNT | _locked_flags(src) | extra)


def _build_root(spec: dict, proc: bool, layers: list) -> str:
    """Mount the run's root (read-only binds + tmpfs), pivot into it; return the working dir."""
    root = spec["root"]
    ro = MS_RDONLY | MS_NOSUID | MS_NODEV
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    # the scratch tmpfs first: binds of an interpreter installed under /tmp then sit on top of it
    scratch = f"size={spec['limits']['file_mb']}m,mode=1777"
    for path in ("/tmp", "/dev/shm"):  # noqa: S108
        os.makedirs(root + path, mode=0o755, exist_ok=True)
        _mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, scratch)
    for entry in spec["mounts"]:
        dst = root + entry["path"]
        if entry["kind"] == "link":
            os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
            os.symlink(entry["target"], dst)
        elif entry["kind"] == "mask":
            _bind("/dev/null", dst, False, ro, create=False)
        else:
            _bind(entry["path"], dst, entry["kind"] == "dir", ro)
    os.makedirs(root + "/dev", mode=0o755, exist_ok=True)
    for name in DEVICES:
        _bind(f"/dev/{name}", f"{root}/dev/{name}", False, MS_NOSUID | MS_NOEXEC)
    for name, target in STDIO_LINKS.items():
        os.symlink(target, f"{root}/dev/{name}")
    if proc:
        os.makedirs(root + "/proc", mode=0o555, exist_ok=True)
        try:  # a fresh /proc: only this namespace's processes; absent if the kernel says no
            _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            layers.append("proc")
        except OSError:
            pass
    _write_files(spec, root + WORK)
    _pivot(root)
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | ro)
    return WORK


def _pivot(root: str) -> None:
    os.chdir(root)
    number = PIVOT_ROOT.get(os.uname().machine)
    if number is not None and libc.syscall(ctypes.c_long(number), b".", b".") == 0:
        _check(libc.umount2(b".", MNT_DETACH), "detach the host root")
    else:
        _mount(".", "/", None, MS_MOVE)
        os.chroot(".")
    os.chdir("/")


# ---------------------------------------------------------------- program


def _set_limits(limits: dict) -> None:
    mb = 1024 * 1024
    pairs = {
        resource.RLIMIT_CPU: limits["cpu_s"],
        resource.RLIMIT_AS: limits["memory_mb"] * mb,
        resource.RLIMIT_FSIZE: limits["file_mb"] * mb,
        resource.RLIMIT_NOFILE: limits["nofile"],
        resource.RLIMIT_NPROC: limits["nproc"],
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_MSGQUEUE: 0,
    }
    for key, value in pairs.items():
        _, hard = resource.getrlimit(key)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # unprivileged, a limit can only go down
        resource.setrlimit(key, (value, value))


def _drop_privileges(uid) -> None:
    _prctl(PR_SET_SECUREBITS, SECUREBITS)  # needs CAP_SETPCAP: absent only where nothing to drop
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63  # dropping a capability the kernel lacks is a harmless EINVAL
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if uid is not None:
        for fd in (0, 1, 2):  # the harness's pipes: reopening /dev/stdout must work for the program
            os.fchown(fd, uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if _prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS refused")


def _exec_program(spec: dict, work: str, status: Status) -> None:
    try:
        os.close(status.fd)
        os.setsid()  # a group kill by the program reaches its own processes, never ours
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; the program must not
            signal.signal(sig, signal.SIG_DFL)
        try:  # when memory runs out, the kernel kills the program, never init
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        _set_limits(spec["limits"])
        _drop_privileges(spec["uid"])
        os.chdir(work)
        argv = [a.replace("{work}", work) for a in spec["argv"]]
        os.execve(argv[0], argv, spec["env"])  # noqa: S606  (argv is the harness's)
    except BaseException as err:  # noqa: BLE001  (whatever it was, the program did not start)
        os.write(2, f"sandbox: cannot start the program: {err}\n".encode())
    os._exit(127)


def main(spec_path: str) -> None:
    """Read the spec (the tmpfs mounts later hide the host's /tmp) and launch."""
    with open(spec_path, "rb") as f:
        spec = marshal.load(f)  # noqa: S302  (written by the harness, in a dir only it can write)
    try:
        launch(spec)
    except BaseException as err:  # noqa: BLE001  (reported to the harness, which raises it)
        Status(spec["status_fd"]).send(error=f"{type(err).__name__}: {err}")
        os._exit(126)


if __name__ == "__main__":
    main(sys.argv[1])
    sys.exit(127)
