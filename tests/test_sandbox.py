"""Hostile programs fail cleanly in the sandbox; the harness and the host stay unharmed.

Each hostile program prints the expected answer only if its attack worked, so a pass means an escape.
After every run no process of a sandbox uid may be left, and host-side checks confirm the attack did
nothing outside (files, sockets, processes, environment).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lm_eval_routed.evals import sandbox
from lm_eval_routed.evals.livecodebench import evaluate_code
from lm_eval_routed.evals.sandbox import Limits, run_sandboxed

LIMITS = Limits(wall_s=2.0, memory_mb=512, file_mb=16, nproc=32)
SECRET = "routed-secret-" + secrets.token_hex(4)
REPO = Path(__file__).resolve().parents[1]


def stdin_row(expected: str = "42") -> dict:
    test = [{"input": "", "output": expected, "testtype": "stdin"}]
    return {"question_content": "q", "public_test_cases": json.dumps(test), "metadata": "{}"}


def functional_row(expected: str = "42") -> dict:
    test = [{"input": "1", "output": expected, "testtype": "functional"}]
    return {
        "question_content": "q",
        "public_test_cases": json.dumps(test),
        "metadata": json.dumps({"func_name": "f"}),
    }


def sandbox_processes() -> list[int]:
    """Host pids owned by a sandbox uid (none may outlive a run)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if uid >= 200_000:
            found.append(int(pid))
    return found


@pytest.fixture(scope="module")
def host():
    """A sentinel process, a listening socket and a secret in the harness environment."""
    os.environ["ROUTED_SECRET"] = SECRET
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    yield {"sentinel": sentinel, "port": listener.getsockname()[1], "listener": listener}
    sentinel.kill()
    listener.close()
    os.environ.pop("ROUTED_SECRET", None)


def host_probe(tmp: Path) -> Path:
    return REPO / f".sandbox_probe_{os.getpid()}_{tmp.name}"


HOSTILE = {
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
    "disk_fill_one_file": (
        "with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'x' * 1024 ** 2)\n"
        "print(42)\n"
    ),
    "disk_fill_many_files": (
        "for i in range(64):\n    with open(f'f{i}', 'wb') as f:\n        f.write(b'x' * 8 * 1024 ** 2)\n"
        "print(42)\n"
    ),
    "shm_fill": (
        "for i in range(64):\n    with open(f'/dev/shm/f{i}', 'wb') as f:\n"
        "        f.write(b'x' * 8 * 1024 ** 2)\nprint(42)\n"
    ),
    "gigantic_output": "import sys\nwhile True:\n    sys.stdout.write('4' * 65536)\n",
    "gigantic_stderr": "import sys\nwhile True:\n    sys.stderr.write('4' * 65536)\n",
    "stack_overflow": (
        "import sys\nsys.setrecursionlimit(10 ** 9)\ndef f(n):\n    return f(n + 1) + 1\nprint(f(0))\n"
    ),
    "escalate_to_root": "import os\nos.setuid(0)\nprint(42)\n",
    "unshare_and_mount": (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "ok = libc.unshare(0x20000) == 0 and libc.mount(b'none', b'/', None, 0x4000, None) == 0\n"
        "print(42 if ok else 0)\n"
    ),
    "network_outbound": (
        "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 53))\nprint(42)\n"
    ),
    "network_localhost": (
        "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
        "print(42)\n"
    ),
    # Surviving these is harmless (the program may not signal root's launcher, and PID 1 ignores
    # its own SIGKILL); what matters is that the harness and the sentinel live on.
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint(0)\n",
    "kill_everything": (
        "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
        "os.kill({sentinel}, signal.SIGKILL)\nprint(42)\n"
    ),
    "kill_own_group": "import os, signal\nos.killpg(0, signal.SIGKILL)\nprint(0)\n",
    "write_into_repo": "open({probe!r}, 'w').write('pwned')\nprint(42)\n",
    "append_to_harness": "open({harness!r}, 'a').close()\nprint(42)\n",
    "write_host_tmp": "open({host_tmp!r}, 'w').write('pwned')\nprint(42)\n",
    "daemon_survives": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(20)\n"
        "    open({probe!r}, 'w').write('late')\n    os._exit(0)\nprint(0)\n"
    ),
    "os_exit_silently": "import os\nos._exit(0)\n",
    "read_stdin_forever": "import sys\nsys.stdin.read()\nwhile True:\n    pass\n",
}
# Reads a secret: the expected answer is the secret itself, so a leak would pass.
LEAKS = {
    "read_environment": "import os\nprint(os.environ.get('ROUTED_SECRET', 'none'))\n",
    "read_harness_environ": (
        "data = open('/proc/{harness_pid}/environ', 'rb').read()\n"
        "print('{secret}' if b'{secret}' in data else 'none')\n"
    ),
}


def _fill(code: str, host, tmp_path: Path) -> str:
    host_tmp = tmp_path / "escape"
    tmp_path.chmod(0o777)  # were /tmp shared, the dropped uid could write here
    return (
        code.replace("{port}", str(host["port"]))
        .replace("{sentinel}", str(host["sentinel"].pid))
        .replace("{probe!r}", repr(str(host_probe(tmp_path))))
        .replace("{harness!r}", repr(sandbox.__file__))
        .replace("{host_tmp!r}", repr(str(host_tmp)))
        .replace("{harness_pid}", str(os.getpid()))
        .replace("{secret}", SECRET)
    )


def _assert_host_unharmed(host, tmp_path: Path, before: bytes) -> None:
    assert host["sentinel"].poll() is None, "the sentinel process was killed"
    with pytest.raises(BlockingIOError):
        host["listener"].accept()
    assert not host_probe(tmp_path).exists(), "a file appeared in the repository"
    assert not (tmp_path / "escape").exists(), "a file appeared in the host's /tmp"
    assert Path(sandbox.__file__).read_bytes() == before
    deadline = time.monotonic() + 2
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel reaps a dead namespace asynchronously
    assert sandbox_processes() == [], "a sandboxed process outlived its run"


def test_isolation_is_available_here():
    # The hostile suite below relies on these; a kernel without them falls back (logged).
    assert set(sandbox.isolation()) >= {"pid", "net", "mnt"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_fails_cleanly(name, host, tmp_path):
    before = Path(sandbox.__file__).read_bytes()
    start = time.monotonic()
    verdict = evaluate_code(stdin_row(), _fill(HOSTILE[name], host, tmp_path), limits=LIMITS)
    assert not verdict.passed, verdict
    assert verdict.tests[0].status in ("timeout", "runtime_error", "wrong_answer")
    assert time.monotonic() - start < LIMITS.wall_s + 3  # the timeout kill is prompt
    _assert_host_unharmed(host, tmp_path, before)


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_secrets_do_not_leak(name, host, tmp_path):
    before = Path(sandbox.__file__).read_bytes()
    verdict = evaluate_code(stdin_row(SECRET), _fill(LEAKS[name], host, tmp_path), limits=LIMITS)
    assert not verdict.passed, verdict
    _assert_host_unharmed(host, tmp_path, before)


def test_output_flood_is_capped():
    res = run_sandboxed(
        {"a.py": HOSTILE["gigantic_output"]},
        [sandbox.program_python(), "{work}/a.py"],
        limits=LIMITS,
    )
    assert not res.ok and len(res.stdout) <= LIMITS.file_mb * 1024**2
    assert len(res.stdout) > 0  # it did run, and was cut by the file-size limit


@pytest.mark.parametrize(
    "code",
    [
        "import os\nclass Solution:\n    def f(self, x):\n        os._exit(0)\n",
        "class Solution:\n    def f(self, x):\n        raise SystemExit(0)\n",
        "import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'4')\n    except OSError:\n"
        "        pass\nclass Solution:\n    def f(self, x):\n        return 2\n",
    ],
    ids=["os_exit_in_call", "system_exit_in_call", "scribbles_on_fds"],
)
def test_functional_exit_tricks_fail(code):
    verdict = evaluate_code(functional_row(), code, limits=LIMITS)
    assert not verdict.passed and verdict.tests[0].status in ("wrong_answer", "runtime_error")


def test_correct_program_with_extra_whitespace_passes():
    code = "import sys\nsys.stdin.read()\nprint('   42   ')\nprint()\nprint('  ')\n"
    verdict = evaluate_code(stdin_row("42\n"), code, limits=LIMITS)
    assert verdict.passed, verdict


def test_correct_functional_program_passes():
    verdict = evaluate_code(
        functional_row("[1, 1]"),
        "class Solution:\n    def f(self, x: int) -> List[int]:\n        print('noise')\n"
        "        return (x, x)\n",
        limits=LIMITS,
    )
    assert verdict.passed, verdict


def test_limits_reject_nonsense():
    with pytest.raises(ValueError, match="wall_s > 0"):
        Limits(wall_s=0)


def test_exec_check_cli(tmp_path, capsys):
    from lm_eval_routed.cli import main

    tests = [{"input": "2 3\n", "output": "5\n", "testtype": "stdin"}]
    row = {**stdin_row(), "public_test_cases": json.dumps(tests)}
    (tmp_path / "p.json").write_text(json.dumps(row))
    (tmp_path / "ok.py").write_text("print(sum(map(int, input().split())))\n")
    (tmp_path / "resp.txt").write_text("Sure:\n```python\nprint(6)\n```\n")
    assert main(["exec-check", str(tmp_path / "p.json"), str(tmp_path / "ok.py")]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["passed"] and verdict["tests"][0]["status"] == "passed"
    assert main(["exec-check", str(tmp_path / "p.json"), str(tmp_path / "resp.txt")]) == 1
    assert json.loads(capsys.readouterr().out)["tests"][0]["status"] == "wrong_answer"
    assert main(["exec-check", str(tmp_path / "missing.json"), str(tmp_path / "ok.py")]) == 2
    assert "exec-check:" in capsys.readouterr().err
