"""The harness end of a run's pipes: stdin fed, stdout and stderr read up to a limit, and the stop.

Output is read as it comes, never past the limit: a flood costs the harness at most the limit in
memory and ends the run at once with an ``output_limit`` verdict, well inside the time limit.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class Capture:
    """What a run wrote (stdout whole up to the limit, the tail of stderr) and why reading stopped."""

    stdout: bytearray
    stderr: bytearray
    timed_out: bool = False
    output_limit: bool = False


def pump(proc: subprocess.Popen, data: bytes, deadline: float, limit: int, tail: int) -> Capture:
    """Feed stdin, read stdout/stderr until the run ends, ``deadline`` passes or either stream
    passes ``limit`` bytes; keep stdout whole and stderr's last ``tail`` bytes."""
    cap = Capture(bytearray(), bytearray())
    sel = selectors.DefaultSelector()
    if data:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    exited_at = None
    pidfd = _pidfd(proc.pid)
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ)
    sent, err_total, streams = 0, 0, 2
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and pidfd is None and exited(proc.pid):
                exited_at = now
            # Once the launcher is gone the namespace is too, and the pipes end; only strays of a
            # weak run (no PID namespace) could hold them longer.
            if exited_at is not None and (streams == 0 or now - exited_at > 0.5):
                break
            if now >= deadline:
                cap.timed_out = True
                break
            wait = deadline - now if pidfd is not None and exited_at is None else 0.05
            for key, _ in sel.select(min(wait, deadline - now)):
                if key.fileobj == pidfd:
                    sel.unregister(pidfd)
                    exited_at = time.monotonic()
                elif key.fileobj is proc.stdin:
                    try:
                        sent += os.write(proc.stdin.fileno(), data[sent : sent + 65536])
                    except (BrokenPipeError, BlockingIOError) as err:
                        if isinstance(err, BrokenPipeError):
                            sent = len(data)
                    if sent >= len(data):
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                else:
                    chunk = os.read(key.fileobj.fileno(), 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        streams -= 1
                    elif key.fileobj is proc.stdout:
                        cap.stdout += chunk
                        if len(cap.stdout) > limit:
                            del cap.stdout[limit:]
                            cap.output_limit = True
                    else:
                        err_total += len(chunk)
                        cap.stderr += chunk
                        del cap.stderr[:-tail]
                        cap.output_limit |= err_total > limit
            if cap.output_limit:
                break
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    return cap


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # an older kernel: poll instead


def exited(pid: int) -> bool:
    """Whether our child has exited, without reaping it (so its pid still names its group)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def stop(proc: subprocess.Popen, group) -> None:
    """End the run: the launcher kills init (so the kernel kills the namespace) and waits for it."""
    if not exited(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
    # Unreaped, the launcher's pid still names its process group: the kill cannot hit a stranger.
    # It ends a launcher that did not stop, and the strays of a weak run (no PID namespace).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if group is not None and not group.kill():
        logger.error("sandbox: processes of a run survived SIGKILL: %s", sorted(group.members()))
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            stream.close()


def read_status(fd: int) -> dict:
    """Everything the launcher reported on the status pipe, merged (it is closed by now)."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    report: dict = {}
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        with contextlib.suppress(ValueError, SyntaxError):
            report.update(ast.literal_eval(line))
    return report
