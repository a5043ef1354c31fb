"""Lab fixtures for the kernel adapter: private network namespaces, helpers run inside them.

Rules: namespaces are named ``fk<6 hex>-<tag>`` and only those this fixture created are
deleted; helper processes are killed by PID. When the lab cannot be built (no root, no
``ip``/``nft``, namespace creation fails) the test is skipped with the reason — or fails
when ``FTPALG_LAB_REQUIRED=1`` (CI).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.requirements import unavailable  # skip, or fail with FTPALG_LAB_REQUIRED=1


class Lab:
    """Namespaces and processes owned by one test."""

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.names: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    def netns(self, tag: str = "x") -> str:
        """A fresh namespace with ``lo`` up."""
        name = f"fk{self.run_id}-{tag}"
        for cmd in (["ip", "netns", "add", name], ["ip", "-n", name, "link", "set", "lo", "up"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                unavailable(f"{' '.join(cmd)}: {proc.stderr.strip()}")
            if cmd[1] == "netns":
                self.names.append(name)
        return name

    def sh(self, ns: str, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=30
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} in {ns}: {proc.stderr.strip()}")
        return proc.stdout

    def python(self, ns: str, code: str, timeout: float = 20) -> str:
        """Run ``code`` with this interpreter inside ``ns``; its stdout (fails on error)."""
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, f"helper in {ns} failed:\n{proc.stderr}"
        return proc.stdout

    def spawn(self, ns: str, code: str) -> subprocess.Popen[str]:
        """Start ``code`` inside ``ns`` in the background; killed by PID at teardown."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u", "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        unavailable("needs root for network namespaces")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            unavailable(f"{tool!r} is not installed")
    env = Lab()
    try:
        yield env
    finally:
        env.cleanup()
