"""Run ftpalg itself inside a lab namespace (normally the gateway), as a real process.

How this works: `start_ftpalg()` launches `python -m ftpalg ...` with JSON logs into a file
in the lab's namespace, waits for the `started` event (or reports the process's own one-line
error and log tail), and registers a stop with the lab, so the daemon is always gone — and
has removed its kernel state — before the namespaces are deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftpalg.lab.netns import Lab, LabError, Role


class AlgProcess:
    def __init__(self, lab: Lab, proc: subprocess.Popen[Any], log: Path) -> None:
        self.lab = lab
        self.proc = proc
        self.log = log

    def mark(self) -> int:
        """Where the log ends now (after its last complete line), for the `since` arguments:
        a test reads only what ftpalg logged after its own start, not earlier tests' lines."""
        data = self.log.read_bytes()
        return data.rfind(b"\n") + 1

    def log_since(self, since: int = 0) -> bytes:
        """The raw log from byte offset `since` (a `mark()`) on."""
        with self.log.open("rb") as f:
            f.seek(since)
            return f.read()

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        out = []
        for line in self.log_since(since).decode(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def named(self, event: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events(since) if e.get("event") == event]

    def fds(self) -> int:
        """How many descriptors the ftpalg process holds now."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        self.stop()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful: drain, remove kernel state); SIGKILL if it does not end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_ftpalg(
    lab: Lab,
    args: list[str],
    role: Role = "gw",
    ready_timeout: float = 15.0,
    wrapper: tuple[str, ...] = (),
) -> AlgProcess:
    """`wrapper`: a command that runs ftpalg (e.g. `setpriv` to start it without root)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{lab.id}-ftpalg-"))
    log = workdir / "ftpalg.log"
    argv = [*wrapper, sys.executable, "-m", "ftpalg", *args, "--log-format", "json"]
    with log.open("wb") as out:
        proc = lab.popen(
            role,
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
    alg = AlgProcess(lab, proc, log)
    lab.on_close(alg.close)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if alg.named("started"):
            return alg
        if proc.poll() is not None:
            raise LabError(f"ftpalg exited with {proc.returncode}: {alg.tail(5)}")
        time.sleep(0.05)
    alg.stop()
    raise LabError(f"ftpalg did not start within {ready_timeout:g} s: {alg.tail(5)}")
