"""What the benchmark ran on: CPU, memory, kernel, versions, date and load.

How this works: everything comes from /proc, `os.uname()` and the programs' own version
output, read once at the start (and the load average again at the end), so the markdown and
the JSON say exactly which machine and which moment a number belongs to.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Any


def _first(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def ftpalg_version() -> str:
    """The commit under test and how many files under ftpalg/ differ from it (read-only git)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = _first(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    try:
        status = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "ftpalg"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except OSError:
        return head
    dirty = len(status.splitlines())
    return f"{head} (+{dirty} changed files)" if dirty else head


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def describe() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    os_name = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory_gib": mem_kib / 2**20,
        "kernel": os.uname().release,
        "os": os_name,
        "python": platform.python_version(),
        "uvloop": uv,
        "curl": [*_first(["curl", "--version"]).split(), "?", "?"][1],
        "load_before": load_average(),
        "ftpalg": ftpalg_version(),
    }
