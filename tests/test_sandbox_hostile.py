"""Hostile programs against the sandbox, one class of attack per table; the host must stay unharmed.

Each program prints the secret (or 42, the expected answer) only if its attack worked, so a pass is an
escape. After every verdict, at once and without grace, no process of the run may exist; host-side
checks confirm the attack changed nothing outside (files, sockets, processes, environment).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from lm_eval_routed.evals import isolation as launcher
from lm_eval_routed.evals import sandbox
from lm_eval_routed.evals.livecodebench import evaluate_code
from lm_eval_routed.evals.rootfs import mount_plan, program_python
from lm_eval_routed.evals.sandbox import Limits, RunResult, run_sandboxed

LIMITS = Limits(wall_s=1.5, memory_mb=384, file_mb=16, nproc=32, output_mb=2)
TOKEN = secrets.token_hex(6)
SECRET = f"routed-secret-{TOKEN}"
PWNED = f"pwned-{TOKEN}"
REPO = Path(__file__).resolve().parents[1]
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/run/user/0")  # noqa: S108


@pytest.fixture(scope="module", autouse=True)
def sandbox_here():
    try:
        sandbox.isolation()
    except sandbox.SandboxUnavailable as err:
        pytest.skip(f"this kernel cannot isolate: {err}")


def run(code: str, stdin: str = "", limits: Limits = LIMITS) -> RunResult:
    return run_sandboxed(
        {"main.py": code}, [sandbox.program_python(), "-I", "{work}/main.py"], stdin, limits
    )


def leftovers() -> list[int]:
    """Processes of this harness's runs still alive: per-run uids, launchers and inits."""
    ours = os.path.abspath(launcher.__file__).encode()
    uids = sandbox.uid_range() if os.geteuid() == 0 else range(0)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (
                os.stat(f"/proc/{pid}").st_uid in uids
                or ours in Path(f"/proc/{pid}/cmdline").read_bytes()
            ):
                found.append(int(pid))
        except OSError:
            continue
    return found


def _plant(path: Path, planted: list[Path]) -> None:
    try:
        path.write_text(SECRET + "\n")
        path.chmod(0o644)
        planted.append(path)
    except OSError:
        pass  # a place this machine lacks or protects: nothing of ours is there to steal either


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Secrets planted across the host, a sentinel process, TCP and unix listeners."""
    os.environ["ROUTED_SECRET"] = SECRET
    tmp = tmp_path_factory.mktemp("host")
    tmp.chmod(0o755)
    planted: list[Path] = []
    for folder in (tmp, *map(Path, WORLD_WRITABLE), Path.home(), Path.cwd(), REPO):
        _plant(folder / f".{SECRET}", planted)
    problem = tmp / "problem.json"  # a problem file holding the private expected output
    tests = [{"input": "", "output": SECRET, "testtype": "stdin"}]
    row = {"question_content": "q", "public_test_cases": json.dumps(tests), "metadata": "{}"}
    problem.write_text(json.dumps(row))
    planted.append(problem)
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"])
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    unix_paths = [str(tmp / "host.sock"), f"/tmp/{PWNED}.sock", f"\0{PWNED}"]  # noqa: S108
    unix = []
    for path in unix_paths:
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        if not path.startswith("\0"):
            os.chmod(path, 0o777)  # noqa: S103  (reachable by any uid, were the path visible)
        s.listen(8)
        s.setblocking(False)
        unix.append(s)
    yield {
        "tmp": tmp,
        "planted": planted,
        "problem": problem,
        "sentinel": sentinel,
        "tcp": tcp,
        "unix": unix,
        "unix_paths": unix_paths,
    }
    sentinel.kill()
    for s in [tcp, *unix]:
        s.close()
    for path in [*planted, Path(unix_paths[1])]:
        path.unlink(missing_ok=True)
    os.environ.pop("ROUTED_SECRET", None)


def fill(code: str, host) -> str:
    return (
        code.replace("{secret}", SECRET)
        .replace("{pwned}", PWNED)
        .replace("{planted}", repr([str(p) for p in host["planted"]]))
        .replace("{port}", str(host["tcp"].getsockname()[1]))
        .replace("{sentinel}", str(host["sentinel"].pid))
        .replace("{unix}", repr(host["unix_paths"]))
        .replace("{harness_pid}", str(os.getpid()))
        .replace("{repo}", str(REPO))
        .replace("{prefix}", sys.prefix)
        .replace("{launcher}", os.path.abspath(launcher.__file__))
        .replace("{tmp}", str(host["tmp"]))
    )


def pwned_files(host) -> list[str]:
    places = [*WORLD_WRITABLE, str(Path.home()), str(Path.cwd()), str(REPO), str(host["tmp"])]
    places += [sys.prefix, sys.base_prefix]
    return [
        os.path.join(d, name)
        for d in places
        if os.path.isdir(d)
        for name in os.listdir(d)
        if PWNED in name and not name.endswith(".sock")
    ]


def assert_host_unharmed(host, harness_before: bytes) -> None:
    assert leftovers() == [], "a process of the run outlived its verdict"
    assert host["sentinel"].poll() is None, "the sentinel process was killed"
    for s in [host["tcp"], *host["unix"]]:
        with pytest.raises(BlockingIOError):
            s.accept()
    assert pwned_files(host) == [], "a file written by the program is on the host"
    for path in host["planted"]:
        assert SECRET in path.read_text()
    assert Path(sandbox.__file__).read_bytes() == harness_before


def stdin_row(expected: str) -> dict:
    tests = [{"input": "", "output": expected, "testtype": "stdin"}]
    return {"question_content": "q", "public_test_cases": json.dumps(tests), "metadata": "{}"}


def judge(code: str, expected: str, host, limits: Limits = LIMITS):
    before = Path(sandbox.__file__).read_bytes()
    start = time.monotonic()
    verdict = evaluate_code(stdin_row(expected), fill(code, host), limits=limits)
    took = time.monotonic() - start
    assert_host_unharmed(host, before)
    # A generous bound for a busy machine: a harness that waited on a program's descendants would
    # take their sleep (30 s and more), far past it.
    assert took < limits.wall_s + 20, f"the verdict took {took:.1f}s"
    return verdict


# ---------------------------------------------------------------- 1. outliving the timeout

OUTLIVE = {
    "setsid_sleeper": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
    ),
    "setpgid_sleeper": (
        "import os, time\nos.setpgid(0, 0)\nif os.fork() == 0:\n    os.setpgid(0, 0)\n"
        "    time.sleep(60)\ntime.sleep(60)\n"
    ),
    "setsid_cpu_burners": (
        "import os\nfor _ in range(4):\n    if os.fork() == 0:\n        os.setsid()\n"
        "        while True:\n            os.fork() if os.getpid() % 7 == 0 else None\nwhile True:\n"
        "    pass\n"
    ),
    "double_fork_daemon_then_exit": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(30)\n        open('/tmp/late', 'w').write('x')\n    os._exit(0)\n"
        "print(42)\n"
    ),
    "ignores_signals_in_new_session": (
        "import os, signal, time\nfor s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
        "    signal.signal(s, signal.SIG_IGN)\nif os.fork() == 0:\n    os.setsid()\n"
        "    while True:\n        time.sleep(1)\nwhile True:\n    pass\n"
    ),
    "kills_init_then_lingers": (
        "import os, signal, time\nfor s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n"
        "    try:\n        os.kill(1, s)\n    except OSError:\n        pass\n"
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint(42)\n"
    ),
    "nested_pid_namespace": (
        "import ctypes, os, time\nlibc = ctypes.CDLL(None)\n"
        "ok = libc.unshare(0x10000000 | 0x20000000) == 0\nif os.fork() == 0:\n    time.sleep(60)\n"
        "time.sleep(60)\n"
    ),
    "children_outlive_a_fast_exit": (
        "import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n        os.setsid()\n"
        "        while True:\n            time.sleep(0.01)\nos._exit(0)\n"
    ),
    "exec_into_a_sleeper": (
        "import os, sys\nif os.fork() == 0:\n    os.setsid()\n"
        "    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    ),
}


@pytest.mark.parametrize("name", sorted(OUTLIVE))
def test_no_process_outlives_the_verdict(name, host):
    verdict = judge(OUTLIVE[name], "42", host)
    if name not in ("double_fork_daemon_then_exit", "kills_init_then_lingers"):
        assert not verdict.passed, verdict


# ---------------------------------------------------------------- 2. cheating: host files

CHEAT = {
    "open_planted_files": (
        "for p in {planted}:\n    try:\n        print(open(p).read().strip())\n        break\n"
        "    except OSError:\n        pass\n"
    ),
    "climb_out_of_the_work_dir": (
        "import os\nfor p in {planted}:\n    rel = '../' * 12 + p.lstrip('/')\n    try:\n"
        "        print(open(rel).read().strip())\n    except OSError:\n        pass\n"
    ),
    "through_proc_of_other_processes": (
        "import os\nfor pid in os.listdir('/proc'):\n    if not pid.isdigit():\n        continue\n"
        "    for p in {planted}:\n        try:\n"
        "            print(open(f'/proc/{pid}/root' + p).read().strip())\n        except OSError:\n"
        "            pass\n    for leaf in ('environ', 'cmdline'):\n        try:\n"
        "            data = open(f'/proc/{pid}/{leaf}', 'rb').read()\n"
        "            print('{secret}' if b'{secret}' in data else '')\n        except OSError:\n"
        "            pass\n"
    ),
    "harness_environ_by_pid": (
        "data = open('/proc/{harness_pid}/environ', 'rb').read()\n"
        "print('{secret}' if b'{secret}' in data else 'none')\n"
    ),
    "own_environment": "import os\nprint(os.environ.get('ROUTED_SECRET', 'none'))\n",
    "inherited_descriptors": (
        "import os\nfor fd in range(3, 1024):\n    try:\n        data = os.read(fd, 1 << 20)\n"
        "    except OSError:\n        continue\n    print('{secret}' if b'{secret}' in data else '')\n"
        "    print('{secret}')\n"
    ),
    "host_config_and_repo": (
        "for p in ('/etc/passwd', '/etc/shadow', '/etc/hostname', '{repo}/README.md',\n"
        "          '{repo}/tests/test_sandbox_hostile.py', '/root/.bashrc', '{launcher}'):\n"
        "    try:\n        open(p).read()\n        print('{secret}')\n    except OSError:\n"
        "        pass\n"
    ),
    "remount_binds_writable": (
        "import ctypes, os\nlibc = ctypes.CDLL(None)\nlibc.unshare(0x10000000 | 0x20000)\n"
        "for p in ('{prefix}', '/usr/lib', '/'):\n"
        "    libc.mount(None, p.encode(), None, 0x1000 | 0x20, None)\n"
        "    libc.mount(None, p.encode(), None, 0x20, None)\n    try:\n"
        "        open(os.path.join(p, '{pwned}'), 'w').write('x')\n        print('{secret}')\n"
        "    except OSError:\n        pass\n"
    ),
}


@pytest.mark.parametrize("name", sorted(CHEAT))
def test_program_reads_no_host_file(name, host):
    verdict = judge(CHEAT[name], SECRET, host, Limits(wall_s=6, memory_mb=384, file_mb=16))
    assert not verdict.passed, verdict


def test_a_walk_of_everything_visible_finds_no_secret(host):
    code = (
        "import os\nn = 0\nfor root, dirs, files in os.walk('/'):\n"
        "    dirs[:] = [d for d in dirs if os.path.join(root, d) != '/proc']\n    n += len(files)\n"
        "    for f in files:\n        if '{token}' in f or f == 'problem.json':\n"
        "            print(os.path.join(root, f))\nprint('walked', n)\n"
    ).replace("{token}", TOKEN)
    res = run(code, limits=Limits(wall_s=60))
    *found, last = res.stdout.splitlines()
    assert last.startswith("walked ") and int(last.split()[1]) > 100, res  # it saw the libraries
    assert found == [], f"host files visible in the sandbox: {found}"
    assert leftovers() == []


def test_problem_file_with_expected_outputs_stays_out_of_reach(host):
    code = f"print(open({str(host['problem'])!r}).read())\n"
    verdict = judge(code, SECRET, host)
    assert not verdict.passed and verdict.tests[0].status == "runtime_error", verdict
    assert "No such file" in verdict.tests[0].detail


def test_root_is_read_only_and_minimal():
    res = run(
        "import os\nprint(sorted(os.listdir('/')))\ntry:\n    open('/x', 'w')\nexcept OSError as e:\n"
        "    print(e.errno)\nprint(os.getuid() != 0, os.getcwd())\n"
    )
    listing, errno_line, who = res.stdout.splitlines()
    # The fixed rooms, plus the first part of each path the plan binds (where this interpreter lives).
    bound = {Path(e["path"]).parts[1] for e in mount_plan(program_python()) if e.get("path")}
    assert set(eval(listing)) <= {"dev", "etc", "lib", "lib64", "proc", "tmp", "usr"} | bound
    assert errno_line == "30" and who == "True /tmp/work"  # EROFS


KEY_SYSCALLS = {
    "x86_64": (248, 249, 250),
    "aarch64": (217, 218, 219),
}  # add_key, request_key, keyctl


def test_keys_of_the_harness_session_stay_out_of_reach():
    numbers = KEY_SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"key syscall numbers unknown for {platform.machine()}")
    add_key, request_key, keyctl = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    key = libc.syscall(add_key, b"user", SECRET.encode(), SECRET.encode(), len(SECRET), -3)
    if key < 0:
        pytest.skip(f"no session keyring to add a key to: {os.strerror(ctypes.get_errno())}")
    code = (
        f"import ctypes\nlibc = ctypes.CDLL(None)\n"
        f"k = libc.syscall({request_key}, b'user', {SECRET.encode()!r}, None, 0)\n"
        f"buf = ctypes.create_string_buffer(256)\n"
        f"n = libc.syscall({keyctl}, 11, k, buf, 256) if k > 0 else 0\n"
        f"print(buf.raw[: max(n, 0)].decode())\n"
    )
    try:
        assert SECRET not in run(code).stdout
        # an ordinary child of the harness reads it: the check above can fail
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert SECRET in plain.stdout
    finally:
        libc.syscall(keyctl, 21, key)  # KEYCTL_INVALIDATE


# ---------------------------------------------------------------- 3. host resources

RESOURCES = {
    "world_writable_host_dirs": (
        "import os\nn = 0\nfor d in {world}:\n    try:\n"
        "        open(os.path.join(d, '{pwned}'), 'w').write('x' * 1000)\n        n += 1\n"
        "    except OSError:\n        pass\nimport time\ntime.sleep(0.2)\nprint(0)\n"
    ),
    "host_unix_sockets": (
        "import socket\nfor p in {unix}:\n    s = socket.socket(socket.AF_UNIX)\n    try:\n"
        "        s.connect(p)\n        print(42)\n    except OSError:\n        pass\n"
    ),
    "network_outbound": (
        "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 53))\nprint(42)\n"
    ),
    "network_localhost": (
        "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
        "print(42)\n"
    ),
    "signals_to_the_host": (
        "import os, signal\nn = 0\nfor pid in ({sentinel}, {harness_pid}, os.getppid(), 1, -1):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        n += 1\n    except OSError:\n"
        "        pass\nprint(42 if n else 0)\n"
    ),
    "raise_rlimits": (
        "import resource\nn = 0\nfor r in (resource.RLIMIT_AS, resource.RLIMIT_NPROC,\n"
        "          resource.RLIMIT_FSIZE, resource.RLIMIT_CPU):\n    try:\n"
        "        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "        n += 1\n    except (ValueError, OSError):\n        pass\nprint(42 if n else 0)\n"
    ),
    "escalate_to_root": "import os\nos.setuid(0)\nprint(42)\n",
}


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_host_resources_stay_out_of_reach(name, host):
    code = RESOURCES[name].replace("{world}", repr(list(WORLD_WRITABLE)))
    verdict = judge(code, "42", host)
    assert not verdict.passed, verdict


def test_nothing_written_survives_into_the_next_run():
    paths = [f"/tmp/{PWNED}", f"/dev/shm/{PWNED}", f"/tmp/work/{PWNED}"]  # noqa: S108
    first = run(f"for p in {paths!r}:\n    open(p, 'w').write('x')\nprint('ok')\n")
    assert first.stdout == "ok\n", first
    second = run(f"import os\nprint([os.path.exists(p) for p in {paths!r}])\n")
    assert second.stdout == "[False, False, False]\n", second
    assert not any(os.path.exists(p) for p in paths)


MEMORY = {
    "memfd_buffers": (
        "import os\nchunk = b'x' * (8 << 20)\nfds, mb = [], 0\ntry:\n    while mb < 4096:\n"
        "        fd = os.memfd_create('m')\n        os.write(fd, chunk)\n        fds.append(fd)\n"
        "        mb += 8\nexcept OSError:\n    pass\nprint(mb, flush=True)\n"
    ),
    "memfd_across_processes": (
        "import os, time\nchunk = b'x' * (8 << 20)\nfor _ in range(8):\n    if os.fork() == 0:\n"
        "        fds = []\n        try:\n            for _ in range(64):\n"
        "                fd = os.memfd_create('m')\n                os.write(fd, chunk)\n"
        "                fds.append(fd)\n        except OSError:\n            pass\n"
        "        time.sleep(30)\ntime.sleep(30)\n"
    ),
    "heap_across_processes": (
        "import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n"
        "        b = bytearray(200 << 20)\n        time.sleep(30)\ntime.sleep(30)\n"
    ),
    "sysv_shared_memory": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.shmat.restype = ctypes.c_void_p\nmb = 0\nfor _ in range(64):\n"
        "    sid = libc.shmget(0, 64 << 20, 0o1600)\n    if sid < 0:\n        break\n"
        "    addr = libc.shmat(sid, None, 0)\n    if addr in (None, ctypes.c_void_p(-1).value):\n"
        "        break\n    ctypes.memset(addr, 1, 64 << 20)\n    libc.shmdt(ctypes.c_void_p(addr))\n"
        "    mb += 64\nprint(mb, flush=True)\n"
    ),
    "tmpfs_fill": (
        "import os\nchunk = b'x' * (1 << 20)\nmb = 0\nfor d in ('/tmp', '/dev/shm', '.'):\n"
        "    for i in range(1024):\n        try:\n"
        "            with open(f'{d}/f{i}', 'wb') as f:\n                f.write(chunk * 4)\n"
        "            mb += 4\n        except OSError:\n            break\nprint(mb, flush=True)\n"
    ),
}


@pytest.mark.parametrize("name", sorted(MEMORY))
def test_memory_of_the_whole_run_is_bounded(name, host):
    before = Path(sandbox.__file__).read_bytes()
    res = run(fill(MEMORY[name], host))
    assert_host_unharmed(host, before)
    stored = int(res.stdout.split()[0]) if res.stdout.strip() else 0
    budget = LIMITS.memory_mb + 64  # the run's cgroup: program, launcher and init
    assert stored <= budget, res
    assert res.memory_peak_mb is not None and res.memory_peak_mb <= budget, res


# ---------------------------------------------------------------- 4. output floods


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.stdout.write('1\\n' * (32 << 20))\n",
        "import sys\nwhile True:\n    sys.stderr.write('1\\n' * 65536)\n",
        "import os\nwith open('/dev/stdout', 'w') as f:\n    while True:\n        f.write('4' * 65536)\n",
        "import os\nwhile True:\n    os.write(1, b'4' * 65536)\n    os.write(2, b'4' * 65536)\n",
    ],
    ids=["stdout_64mb_of_ones", "stderr_forever", "through_dev_stdout", "both_streams"],
)
def test_output_flood_is_stopped_with_a_verdict(code):
    tracemalloc.start()
    try:
        res = run(code, limits=Limits(wall_s=6, output_mb=2))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.output_limit and not res.ok and not res.timed_out, res  # stopped before the wall
    assert len(res.stdout) <= 2 << 20 and len(res.stderr) <= Limits().stderr_tail
    assert peak < 12 << 20, f"the harness held {peak >> 20} MiB for a 2 MiB output limit"
    assert leftovers() == []


def test_output_flood_gets_its_own_status():
    verdict = evaluate_code(
        stdin_row("1"), "import sys\nsys.stdout.write('1\\n' * (32 << 20))\n", limits=LIMITS
    )
    assert verdict.tests[0].status == "output_limit", verdict


@pytest.mark.parametrize(
    "code",
    [
        "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n",
        "import os\nfor i in range(10 ** 6):\n    open(f'f{i}', 'w').close()\n",
    ],
    ids=["one_huge_file", "a_million_files"],
)
def test_file_flood_in_the_work_dir_is_bounded(code, host):
    before = Path(sandbox.__file__).read_bytes()
    res = run(code)
    assert not res.ok, res
    assert_host_unharmed(host, before)


def test_output_just_under_the_limit_is_kept_whole():
    limits = Limits(wall_s=6, output_mb=1)
    under = run("import sys\nsys.stdout.write('7' * ((1 << 20) - 1))\n", limits=limits)
    assert under.ok and len(under.stdout) == (1 << 20) - 1, under
    over = run("import sys\nsys.stdout.write('7' * ((1 << 20) + 1))\n", limits=limits)
    assert over.output_limit and len(over.stdout) == 1 << 20


def test_slow_trickle_ends_at_the_time_limit():
    res = run("import time\nwhile True:\n    print(1, flush=True)\n    time.sleep(0.01)\n")
    assert res.timed_out and not res.output_limit and res.stdout.startswith("1\n")


# ---------------------------------------------------------------- what already held

KEPT = {
    "infinite_loop": "while True:\n    pass\n",
    "sleep_forever": "import time\ntime.sleep(60)\nprint(42)\n",
    "ignores_sigterm": (
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    ),
    "fork_bomb_counted": (
        "import os, time\nn = 0\nfor _ in range(5000):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    n += 1\nprint(42 if n >= 1000 else n)\n"
    ),
    "fork_bomb_exponential": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    ),
    "thread_bomb": (
        "import threading, time\nn = 0\ntry:\n    while True:\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
        "except Exception:\n    pass\nprint(42 if n >= 10000 else n)\n"
    ),
    "memory_bomb": "x = bytearray(8 * 1024 ** 3)\nprint(42)\n",
    "memory_creep": "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 ** 2))\n",
    "stack_overflow": (
        "import sys\nsys.setrecursionlimit(10 ** 9)\ndef f(n):\n    return f(n + 1) + 1\nprint(f(0))\n"
    ),
    "unshare_and_mount": (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "ok = libc.unshare(0x20000) == 0 and libc.mount(b'none', b'/', None, 0x4000, None) == 0\n"
        "print(42 if ok else 0)\n"
    ),
    "kill_own_group": "import os, signal\nos.killpg(0, signal.SIGKILL)\nprint(0)\n",
    "write_into_repo": "open('{repo}/{pwned}', 'w').write('pwned')\nprint(42)\n",
    "append_to_harness": "open('{launcher}', 'a').write('#')\nprint(42)\n",
    "write_host_tmp": "open('{tmp}/{pwned}', 'w').write('pwned')\nprint(42)\n",
    "os_exit_silently": "import os\nos._exit(0)\n",
    "read_stdin_forever": "import sys\nsys.stdin.read()\nwhile True:\n    pass\n",
}


@pytest.mark.parametrize("name", sorted(KEPT))
def test_what_already_held_still_holds(name, host):
    verdict = judge(KEPT[name], "42", host)
    assert not verdict.passed, verdict
    assert verdict.tests[0].status in ("timeout", "runtime_error", "wrong_answer")


def test_signals_at_the_harness_process_group_do_not_escape(host):
    # The launcher runs in a session of its own: a kill aimed at it never reaches the harness.
    res = run("import os, signal\nos.killpg(os.getpgid(0), signal.SIGTERM)\nprint(1)\n")
    assert res.returncode in (0, -signal.SIGTERM), res
    assert leftovers() == []
