"""Process helpers for the lab: tool look-up, stopping process groups, polling.

How this works: every lab process is started as the leader of its own process group
(`start_new_session=True`), so `stop_process` can signal the program and everything it forked
(vsftpd and pure-ftpd fork per session) by the group id, which is our own child's PID. The
leader is reaped only after the final SIGKILL, so that id cannot have been reused in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any


def missing_tools(*names: str) -> list[str]:
    """The names among `names` that are not executable on PATH (or as given)."""
    return [n for n in names if shutil.which(n) is None]


def stop_process(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """Stop the process group led by proc: SIGTERM, wait up to `grace`, then SIGKILL.

    The leader is not reaped until after the final SIGKILL to its group, so its PID (= the
    group id) cannot have been reused by an unrelated process when we signal the group.
    """
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not _exited_unreaped(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers (forked session children)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _exited_unreaped(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll pred() until it is true or timeout elapses."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
