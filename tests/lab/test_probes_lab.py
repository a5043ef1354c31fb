"""Port-scanner probes in the lab: 200 connections from the client namespace through the
gateway in transparent mode, each reset at once (SO_LINGER 0), what `nmap -sT` does. Each
is one `client_gone` line (or a session that opens and closes when the reset comes later),
never an internal error; ftpalg's descriptors return to where they were and a real transfer
still works. The count is taken after a first real session: the event loop (libuv) opens a
reserve descriptor at its first TCP connection and keeps it, which a probe may or may not
trigger."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab
from ftpalg.lab.servers import make_file, start_server
from tests.lab.conftest import idle_fds, start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

PROBES = 200
PROBE_SCRIPT = """
import socket, struct, sys
for _ in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 21), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = start_lab()
    try:
        apply_closed_gateway(lab)
        yield lab
    finally:
        lab.close()


def settled_fds(alg: AlgProcess, baseline: int, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while (count := alg.fds()) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def test_reset_probes_through_the_gateway_leave_nothing_behind(lab: Lab, tmp_path: Path) -> None:
    server = start_server(lab, "vsftpd", lab.addresses.servers_v4[1])
    digest = make_file(server.root, "f.bin", 1 << 20, seed=3)
    alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21"])
    result = run_transfer(lab, "curl-epsv", server.target, "f.bin", tmp_path / "first.bin")
    assert result.ok and result.sha256 == digest, result.detail
    baseline = idle_fds(alg)
    mark = alg.mark()
    host = str(lab.addresses.servers_v4[1])
    run = lab.run("cli", ["python3", "-c", PROBE_SCRIPT, host, str(PROBES)], timeout=60)
    assert run.returncode == 0, run.stderr
    assert settled_fds(alg, baseline) == baseline
    events = alg.events(since=mark)
    errors = [e for e in events if e["level"] == "error"]
    assert not errors, errors[:3]
    gone = [e for e in events if e["event"] == "client_gone"]
    opened = [e for e in events if e["event"] == "session_opened"]
    closed = [e for e in events if e["event"] == "session_closed"]
    assert len(gone) + len(opened) == PROBES and len(closed) == len(opened)
    assert all(e["client"].startswith(str(lab.addresses.client_v4)) for e in gone + opened)
    result = run_transfer(lab, "curl-epsv", server.target, "f.bin", tmp_path / "f.bin")
    assert result.ok and result.sha256 == digest, result.detail
