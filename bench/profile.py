"""py-spy profiles of the ftpalg process while a workload of a missed target runs.

How this works: `Profiler(pid, out)` starts `py-spy record --format raw` (collapsed stacks,
one "frame;frame;... count" line per distinct stack) on the running ftpalg process, the
caller runs the workload, and `stop()` sends SIGINT so py-spy writes its file. Idle samples
(the loop waiting in epoll) are left out by py-spy, so the counts are where ftpalg spends CPU.
`top(file)` turns the stacks into the functions with the most *self* samples (the leaf frame),
the most *total* samples (anywhere on the stack), and `leaf_in`: the leaf (a syscall, with
`--native`) together with the innermost Python frame that led to it, in percent of samples. With
`native=True` py-spy also unwinds C frames (uvloop, libuv, the interpreter), which shows how
much of a session is spent in the event loop machinery rather than in ftpalg's own code.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(.*) (\d+)$")
_LOOP_FRAMES = ("Runner.run", "run_daemon", "main (cli", "_run_code", "_run_module", "<module>")


def available() -> str | None:
    return None if shutil.which("py-spy") or _venv_pyspy() else "py-spy not installed"


def _venv_pyspy() -> str | None:
    import sys

    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else None


class Profiler:
    def __init__(self, pid: int, out: Path, native: bool = False, rate: int = 250) -> None:
        binary = _venv_pyspy() or shutil.which("py-spy") or "py-spy"
        argv = [
            binary,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            str(out),
            "--rate",
            str(rate),
        ]
        argv += ["--native"] if native else ["--nonblocking"]
        self.out = out
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # attached before the workload starts

    def stop(self) -> Path:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.out


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py:123)"
    m = re.match(r"^(.*) \((.*?)([^/]+)\)$", frame)
    return f"{m.group(1)} ({m.group(3)})" if m else frame


def top(file: Path, n: int = 15) -> dict[str, Any]:
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    leaf_c: Counter[str] = Counter()  # native leaf <- innermost Python frame
    samples = 0
    for line in file.read_text(errors="replace").splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        frames = [_short(f) for f in m.group(1).split(";") if f]
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        count = int(m.group(2))
        samples += count
        if frames:
            self_c[frames[-1]] += count
            py = [f for f in frames if ".py:" in f and not f.startswith(_LOOP_FRAMES)]
            leaf = frames[-1].split(" (")[0]
            leaf_c[f"{leaf} <- {py[-1] if py else 'event loop (uvloop/libuv)'}"] += count
        for f in set(frames):
            total_c[f] += count
    pct = 100.0 / samples if samples else 0.0
    return {
        "samples": samples,
        "self": [(f, c * pct) for f, c in self_c.most_common(n)],
        "total": [(f, c * pct) for f, c in total_c.most_common(n)],
        "leaf_in": [(f, c * pct) for f, c in leaf_c.most_common(n)],
    }
