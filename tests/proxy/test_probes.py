"""Port-scanner probes (connect, then reset at once) against a real ftpalg: each costs one
`client_gone` line or a session that opens and closes, never an internal error, and
nothing is leaked: descriptors return to where they were, a real session still works."""

from __future__ import annotations

import json
import os
import socket
import struct
import time

from tests.proxy.conftest import Alg

PROBES = 200


def probe(alg: Alg) -> None:
    """Connect and reset (SO_LINGER 0: close sends RST), what `nmap -sT` does."""
    sock = socket.create_connection((alg.host, alg.port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def fds(alg: Alg) -> int:
    return len(os.listdir(f"/proc/{alg.proc.pid}/fd"))


def events(alg: Alg) -> list[dict[str, object]]:
    return [json.loads(x) for x in alg.log_text().splitlines() if x.startswith("{")]


def settled(alg: Alg, baseline: int, timeout: float = 10) -> int:
    """The fd count once every probe was dealt with (sessions linger up to 2 s)."""
    deadline = time.monotonic() + timeout
    while (count := fds(alg)) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def test_probes_that_reset_at_once_leave_nothing_behind(reverse_alg: Alg) -> None:
    time.sleep(0.5)  # the readiness probe's session is done
    baseline = fds(reverse_alg)
    before = len(events(reverse_alg))
    for _ in range(PROBES):
        probe(reverse_alg)
    assert settled(reverse_alg, baseline) == baseline
    new = events(reverse_alg)[before:]
    assert not [e for e in new if e["level"] == "error"], [e for e in new if e["level"] == "error"]
    assert "Traceback" not in reverse_alg.log_text()
    gone = [e for e in new if e["event"] == "client_gone"]
    opened = [e for e in new if e["event"] == "session_opened"]
    closed = [e for e in new if e["event"] == "session_closed"]
    assert len(gone) + len(opened) == PROBES, (len(gone), len(opened))
    assert len(closed) == len(opened)
    sock = socket.create_connection((reverse_alg.host, reverse_alg.port), timeout=5)
    with sock:
        assert sock.recv(200).startswith(b"220")
        sock.sendall(b"NOOP\r\n")
        assert sock.recv(200).startswith(b"200")
