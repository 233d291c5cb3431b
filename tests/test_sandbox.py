"""The sandbox's contract: limits validated in one line, correct programs pass, isolation is the
same for root and ordinary users, and a missing layer refuses to run untrusted code unless weaker
isolation is opted into (and then recorded). Hostile programs: tests/test_sandbox_hostile.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.evals import cgroups, sandbox
from lm_eval_routed.evals.livecodebench import evaluate_code
from lm_eval_routed.evals.sandbox import Limits, run_sandboxed

LIMITS = Limits(wall_s=2.0, memory_mb=512, file_mb=16, nproc=32)
REPO = Path(__file__).resolve().parents[1]
CORE_LAYERS = {"cgroup", "mount", "pid", "net", "ipc", "uts", "cgroupns", "root", "proc", "keyring"}


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


def run(code: str, limits: Limits = LIMITS, stdin: str = ""):
    return run_sandboxed(
        {"main.py": code}, [sandbox.program_python(), "-I", "{work}/main.py"], stdin, limits
    )


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "field, value",
    [
        ("wall_s", math.nan),
        ("wall_s", math.inf),
        ("wall_s", -math.inf),
        ("wall_s", -1),
        ("wall_s", 0),
        ("wall_s", 1e300),
        ("wall_s", sandbox.MAX_WALL_S + 1),
        ("wall_s", True),
        ("wall_s", "6"),
        ("memory_mb", 10**12),
        ("memory_mb", 1.5),
        ("file_mb", 0),
        ("output_mb", 0),
        ("nproc", math.nan),
        ("nofile", 10**9),
    ],
)
def test_limits_reject_nonsense_in_one_line(field, value):
    with pytest.raises(ValueError, match=f"sandbox limits: {field} must be") as err:
        Limits(**{field: value})
    assert "\n" not in str(err.value)


def test_the_longest_timeout_allowed_judges_a_correct_program_correct():
    res = run("print(sum(map(int, input().split())))\n", Limits(wall_s=sandbox.MAX_WALL_S), "2 3\n")
    assert res.ok and res.stdout == "5\n", res


@pytest.mark.parametrize("timeout", ["nan", "inf", "-inf", "-1", "0", "1e300", "86401"])
def test_exec_check_bad_timeout_is_one_line(timeout, tmp_path, capsys):
    from lm_eval_routed.cli import main

    (tmp_path / "p.json").write_text(json.dumps(stdin_row()))
    (tmp_path / "ok.py").write_text("print(42)\n")
    args = ["exec-check", str(tmp_path / "p.json"), str(tmp_path / "ok.py"), f"--timeout={timeout}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("exec-check: sandbox limits: wall_s must be") and err.count("\n") == 1


# ---------------------------------------------------------------- what a run gets


def test_isolation_is_complete_here_and_recorded_in_verdicts():
    iso = sandbox.isolation()
    assert iso.full and set(iso.layers) >= CORE_LAYERS, iso
    assert {"uid"} <= set(iso.layers) if os.geteuid() == 0 else {"user"} <= set(iso.layers)
    verdict = evaluate_code(stdin_row(), "print(42)\n", limits=LIMITS)
    assert verdict.passed and verdict.to_dict()["isolation"] == "full", verdict


def test_numpy_is_importable_when_the_grader_has_it():
    require("numpy")
    res = run("import numpy as np\nprint(int(np.arange(10).sum()))\n")
    assert res.ok and res.stdout == "45\n", res


def test_program_runs_unprivileged_without_capabilities():
    res = run(
        "import os\nst = open('/proc/self/status').read().split('\\n')\n"
        "print([l.split()[1] for l in st if l.startswith(('CapEff', 'CapPrm', 'CapBnd', 'NoNewPrivs'))])\n"
        "print(os.getuid() != 0, os.getgid() != 0)\n"
    )
    assert res.stdout.splitlines() == [
        "['0000000000000000', '0000000000000000', '0000000000000000', '1']",
        "True True",
    ], res


def test_bad_weak_opt_in_value_is_one_line(monkeypatch):
    monkeypatch.setenv(sandbox.ALLOW_WEAK_ENV, "yes")
    with pytest.raises(ConfigError, match="ROUTED_SANDBOX_ALLOW_WEAK must be 1"):
        run("print(1)\n")


@pytest.fixture
def fresh_probe():
    """Forget the probed cgroup layout and isolation before and after the test."""
    cgroups.setup.cache_clear()
    sandbox._probe.cache_clear()
    yield
    cgroups.setup.cache_clear()
    sandbox._probe.cache_clear()


def test_missing_cgroup_refuses_and_weak_opt_in_is_recorded(
    fresh_probe, monkeypatch, tmp_path, capsys
):
    from lm_eval_routed.cli import main

    (tmp_path / "p.json").write_text(json.dumps(stdin_row()))
    (tmp_path / "ok.py").write_text("print(42)\n")
    args = ["exec-check", str(tmp_path / "p.json"), str(tmp_path / "ok.py")]
    monkeypatch.setenv(cgroups.CGROUP_ENV, str(tmp_path / "no-such-cgroup"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "refusing to run untrusted code without a per-run cgroup" in err
    ), err
    assert f"{sandbox.ALLOW_WEAK_ENV}=1" in err
    monkeypatch.setenv(sandbox.ALLOW_WEAK_ENV, "1")
    assert main(args) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["passed"] and verdict["isolation"] == "weak (missing: cgroup)", verdict
    assert run("print(1)\n").isolation.label == "weak (missing: cgroup)"


# ---------------------------------------------------------------- the same for ordinary users

UNPRIVILEGED_UID = 61_000 + os.getpid() % 1000
CHILD = r"""
import ctypes, json, os, sys
args = json.loads(sys.argv[1])
for path in args["join"]:
    with open(path, "w") as f:
        f.write("0")
os.setgroups([])
os.setgid(args["uid"])
os.setuid(args["uid"])
if args["block_userns"]:  # a kernel (or container) that refuses user namespaces
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 1, 0, 0, 0)  # the uid change made us non-dumpable: /proc/self would be root's
    assert libc.unshare(0x10000000) == 0
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {args['uid']} 1"),
                       ("gid_map", f"0 {args['uid']} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
sys.path.insert(0, args["repo"])
from lm_eval_routed.evals import sandbox
out = {}
try:
    for name, code in args["programs"].items():
        res = sandbox.run_sandboxed({"main.py": code}, [sandbox.program_python(), "-I",
                                    "{work}/main.py"], "", sandbox.Limits(wall_s=1.5))
        left = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
                and os.stat(f"/proc/{p}").st_uid == os.getuid()]
        out[name] = {"stdout": res.stdout, "timed_out": res.timed_out, "left": left,
                     "label": res.isolation.label, "layers": list(res.isolation.layers)}
except sandbox.SandboxUnavailable as err:
    out["refused"] = str(err)
print(json.dumps(out))
"""


def _unprivileged_python() -> str:
    if os.geteuid() != 0:
        pytest.skip("the suite already runs unprivileged: every sandbox test here is that case")
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3")]):
        if not python:
            continue
        try:
            probe = subprocess.run(  # noqa: S603
                [
                    python,
                    "-c",
                    f"import sys, yaml; sys.path.insert(0, {str(REPO)!r}); "
                    "import lm_eval_routed.evals.sandbox",
                ],
                user=UNPRIVILEGED_UID,
                group=UNPRIVILEGED_UID,
                extra_groups=[],
                capture_output=True,
                cwd="/",
                check=False,
            )
        except OSError:
            continue  # not even executable by that user
        if probe.returncode == 0:
            return python
    pytest.skip("no Python here that an unprivileged user can run this repository with")


@pytest.fixture
def delegated():
    """cgroup directories handed to the unprivileged uid, as a delegating admin would."""
    made = []
    layout = cgroups.setup()
    for parent in dict.fromkeys(layout.parents.values()):
        path = os.path.join(parent, f"routed-test-delegated-{os.getpid()}")
        os.mkdir(path)
        made.append(path)
        for name in [".", *os.listdir(path)]:
            os.chown(os.path.join(path, name), UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    yield [os.path.join(p, "cgroup.procs") for p in made]
    for path in reversed(made):
        for child in os.listdir(path):
            if os.path.isdir(os.path.join(path, child)):
                os.rmdir(os.path.join(path, child))
        os.rmdir(path)


def as_unprivileged(tmp_path, programs: dict, join=(), env=None, block_userns=False) -> dict:
    python = _unprivileged_python()
    args = {
        "uid": UNPRIVILEGED_UID,
        "repo": str(REPO),
        "join": list(join),
        "programs": programs,
        "block_userns": block_userns,
    }
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    script.chmod(0o644)
    tmp_path.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(home), **(env or {})}
    proc = subprocess.run(  # noqa: S603
        [python, str(script), json.dumps(args)],
        capture_output=True,
        text=True,
        env=environ,
        cwd="/",
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_an_unprivileged_harness_gets_the_same_isolation(tmp_path, delegated):
    home = tmp_path / "home"
    secret_files = {"token": ".cache/huggingface/token", "rc": ".bashrc"}
    programs = {
        "read_home": (
            f"for p in {[str(home / f) for f in secret_files.values()]!r}:\n    try:\n"
            "        print(open(p).read())\n    except OSError as e:\n        print(e.errno)\n"
        ),
        "append_bashrc": f"open({str(home / '.bashrc')!r}, 'a').write('pwned')\n",
        "setsid_sleeper": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
        ),
        "who": "import os\nprint(os.getuid(), sorted(os.listdir('/')))\n",
    }
    (home / ".cache/huggingface").mkdir(parents=True)
    for rel in secret_files.values():
        (home / rel).write_text("routed-user-secret\n")
    os.chown(home, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    out = as_unprivileged(tmp_path, programs, join=delegated)
    assert "refused" not in out, out
    for name, res in out.items():
        assert res["label"] == "full" and CORE_LAYERS | {"user"} <= set(res["layers"]), res
        assert res["left"] == [], f"{name}: processes outlived the run"
    assert "routed-user-secret" not in out["read_home"]["stdout"]
    assert (home / ".bashrc").read_text() == "routed-user-secret\n"
    assert out["setsid_sleeper"]["timed_out"]
    uid, root = out["who"]["stdout"].split(" ", 1)
    assert int(uid) != UNPRIVILEGED_UID and "home" not in root


def test_an_unprivileged_harness_without_a_cgroup_refuses_in_one_line(tmp_path):
    out = as_unprivileged(tmp_path, {"hello": "print(1)\n"})
    line = out["refused"]
    assert (
        "\n" not in line
        and "without a per-run cgroup" in line
        and f"{sandbox.ALLOW_WEAK_ENV}=1" in line
    )


def test_weaker_isolation_runs_only_when_opted_into_and_says_so(tmp_path):
    out = as_unprivileged(tmp_path, {"hello": "print(1)\n"}, env={sandbox.ALLOW_WEAK_ENV: "1"})
    assert out["hello"]["stdout"] == "1\n" and out["hello"]["label"] == "weak (missing: cgroup)"


def test_a_kernel_refusing_user_namespaces_is_named(tmp_path, delegated):
    out = as_unprivileged(tmp_path, {"hello": "print(1)\n"}, join=delegated, block_userns=True)
    assert "without a user namespace (" in out.get("refused", ""), out
    assert "user.max_user_namespaces" in out["refused"]


def test_the_pid_namespace_alone_ends_every_process(fresh_probe, monkeypatch, tmp_path):
    # Without a cgroup to kill (weak, opted into), init's death still takes down every process.
    if not sandbox._root_of_initial_namespace():
        pytest.skip("finding a run's processes needs the per-run uids a root harness gives")
    monkeypatch.setenv(cgroups.CGROUP_ENV, str(tmp_path / "no-such-cgroup"))
    monkeypatch.setenv(sandbox.ALLOW_WEAK_ENV, "1")
    code = "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        os.setsid()\n"
    code += "        time.sleep(60)\ntime.sleep(60)\n"
    res = run(code, Limits(wall_s=1))
    assert res.timed_out and res.isolation.label == "weak (missing: cgroup)", res
    uids = sandbox.uid_range()
    alive = [p for p in os.listdir("/proc") if p.isdigit() and _uid(p) in uids]
    assert alive == [], "a process outlived its run"


def _uid(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def test_cgroup_v2_layout_is_found_and_used(fresh_probe, monkeypatch, tmp_path):
    # A directory tree shaped like cgroup v2 (this kernel may offer only v1) checks the file protocol.
    own = tmp_path / "user.slice" / "harness"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text("cpu\n")
    monkeypatch.setattr(cgroups, "_mounts", lambda: [(str(tmp_path), "cgroup2", {"rw"})])
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"": "/user.slice/harness"})
    layout = cgroups.setup()
    assert layout == cgroups.CgroupSetup(2, {"memory": str(own), "pids": str(own)})
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    group = cgroups.RunGroup(layout, 100 * sandbox.MB, 10)
    run_dir = Path(group.dirs["memory"])
    assert run_dir.parent == own and group.procs_files == [str(run_dir / "cgroup.procs")]
    assert (run_dir / "memory.max").read_text() == str(100 * sandbox.MB)
    assert (run_dir / "pids.max").read_text() == "10"
    assert group.members() == set() and group.kill()


def test_cgroup_v2_without_memory_and_pids_is_named(fresh_probe, monkeypatch, tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    monkeypatch.setattr(cgroups, "_mounts", lambda: [(str(tmp_path), "cgroup2", {"rw"})])
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"": "/"})
    with pytest.raises(cgroups.CgroupUnavailable, match="not memory and pids"):
        cgroups.setup()


@pytest.mark.parametrize("name", ["../escape.py", "/tmp/abs.py", "..", ""])
def test_file_names_stay_inside_the_work_dir(name):
    with pytest.raises(ValueError, match="plain names"):
        run_sandboxed({name: "print(1)"}, [sandbox.program_python(), "-c", "pass"])


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_run_ends_when_the_program_does_not_when_its_pipes_do(pidfd, monkeypatch):
    from lm_eval_routed.evals import capture

    if not pidfd:  # kernels before 5.3: the harness polls the launcher instead
        monkeypatch.setattr(capture, "_pidfd", lambda pid: None)
    res = run("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(0.5)\nos._exit(3)\n")
    # it ended with the program (exit code 3, no timeout), not when its pipes closed (before 0.5 s)
    assert res.returncode == 3 and not res.timed_out and res.wall_s >= 0.5, res
    res = run("import sys\nprint(sys.stdin.read()[::-1])\n", stdin="abc" * 100_000)
    assert res.ok and res.stdout == "cba" * 100_000 + "\n"
    assert run("while True:\n    pass\n", Limits(wall_s=0.5)).timed_out
