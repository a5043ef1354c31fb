"""`ftpalg` in transparent mode whose kernel set-up fails, in a fresh network namespace:
exit status 1, one line `ftpalg: kernel setup failed: ...` on stderr and nothing else (no
traceback), no socket left open when `main()` returns (the listeners were closed), and the
half-made set-up undone (no policy rule, no local route, no nftables table left behind).

Two real failures: the kernel refuses the IPv6 local route because `lo` is down (a fresh
namespace's `lo` is), after the IPv4 rule and route and the IPv6 rule went in; and `nft`
fails (a program named `nft` first on PATH that exits 1, what a kernel without nf_tables
support looks like to ftpalg) after the whole routing set-up went in.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import unavailable

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

# `ftpalg` is `ftpalg.cli:main`; after it returns, list the sockets this process still holds.
WRAPPER = r"""
import json, os, sys
from ftpalg.cli import main

status = main(sys.argv[1:])
links = []
for fd in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
print(json.dumps({"status": status, "sockets": [x for x in links if x.startswith("socket:")]}))
sys.exit(status)
"""

FAKE_NFT = """#!/bin/sh
echo "Error: Could not process rule: Operation not supported" >&2
exit 1
"""


def sh(*cmd: str, check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (its `lo` is down), removed afterwards."""
    if os.geteuid() != 0:
        unavailable("needs root for a network namespace")
    if shutil.which("ip") is None:
        unavailable("'ip' is not installed")
    name = f"ftpalg-t-{secrets.token_hex(4)}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"ip netns add: {proc.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def run_ftpalg(ns: str, *args: str, path: str | None = None) -> tuple[int, str, dict[str, Any]]:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    if path is not None:
        env["PATH"] = f"{path}:{env.get('PATH', '')}"
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", WRAPPER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.stdout, proc.stderr  # main() returned
    report: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    assert report["status"] == proc.returncode
    return proc.returncode, proc.stderr, report


def nothing_left(ns: str) -> None:
    for family in ("-4", "-6"):
        assert "lookup 100" not in sh("ip", "-n", ns, family, "rule")
        assert sh("ip", "-n", ns, family, "route", "show", "table", "100", check=False) == ""
    if shutil.which("nft") is not None:
        assert "ftpalg" not in sh("ip", "netns", "exec", ns, "nft", "list", "tables")


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_the_kernel_refusing_a_route_is_one_line_and_undone(netns: str) -> None:
    if not os.path.exists("/proc/sys/net/ipv6"):
        unavailable("IPv6 is disabled in this kernel")
    status, stderr, report = run_ftpalg(
        netns, "--listen", "0.0.0.0:2121", "--listen", "[::]:2121", "--log-format", "json"
    )
    assert status == 1
    assert one_line(stderr) == (
        "ftpalg: kernel setup failed: ip -6 route add local default table 100:"
        " Network is down (is 'lo' up?)"
    )
    assert report["sockets"] == []  # both listeners (and every netlink socket) closed
    nothing_left(netns)


def test_nft_failing_is_one_line_and_the_routing_is_undone(netns: str, tmp_path: Path) -> None:
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    fake = tmp_path / "nft"
    fake.write_text(FAKE_NFT)
    fake.chmod(0o755)
    status, stderr, report = run_ftpalg(
        netns, "--listen", "0.0.0.0:2121", "--route-table", "100", path=str(tmp_path)
    )
    assert status == 1
    assert one_line(stderr) == (
        "ftpalg: kernel setup failed: nft -f - failed:"
        " Error: Could not process rule: Operation not supported"
    )
    assert report["sockets"] == []
    nothing_left(netns)
