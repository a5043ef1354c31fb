"""Fixtures for lab tests: a lab that skips (or, with FTPALG_LAB_REQUIRED=1, fails) when the
machine cannot build it, a pool of real FTP servers started on demand, and per-test baselines
for an ftpalg shared by a module's tests."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ftpalg.lab.alg import AlgProcess
from ftpalg.lab.netns import Lab, LabUnavailable, wait_until
from ftpalg.lab.server_base import LogMark
from ftpalg.lab.servers import FtpServer, start_server
from ftpalg.proxy.control import LINGER
from tests.requirements import unavailable

SERVER_KINDS = ("pyftpdlib", "vsftpd", "pure-ftpd")


def start_lab() -> Lab:
    """Build a lab, or skip/fail the test with the reason it cannot be built."""
    try:
        return Lab().start()
    except LabUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = start_lab()
    try:
        yield lab
    finally:
        lab.close()


class ServerPool:
    """One server per (kind, IP version) in a lab, started when first asked for."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._servers: dict[tuple[str, int], FtpServer] = {}

    def get(self, kind: str, version: int = 4) -> FtpServer:
        key = (kind, version)
        if key not in self._servers:
            a = self.lab.addresses
            index = SERVER_KINDS.index(kind)
            address = a.servers_v6[index] if version == 6 else a.servers_v4[index]
            try:
                self._servers[key] = start_server(self.lab, kind, address)
            except LabUnavailable as exc:  # ServerUnavailable: the program is not installed
                unavailable(str(exc))
        return self._servers[key]


# ---- one test's view of an ftpalg shared by a module ----------------------------------------


@dataclass
class Baseline:
    """Where ftpalg's log (and the servers' logs) ended and how many descriptors ftpalg held
    when a test began: the test looks only at what it caused, never at an earlier test's
    lines, and compares descriptor counts with its own starting point."""

    alg: AlgProcess
    log: int
    fds: int
    servers: dict[int, LogMark] = field(default_factory=dict)

    def named(self, event: str) -> list[dict[str, Any]]:
        """ftpalg's `event` lines logged since the test began."""
        return self.alg.named(event, since=self.log)

    def log_since(self) -> bytes:
        return self.alg.log_since(self.log)

    def server_log(self, srv: FtpServer) -> str:
        """What `srv` logged since the test began."""
        return srv.log_text(since=self.servers[id(srv)])

    def seen_clients(self, srv: FtpServer) -> set[str]:
        return srv.seen_clients(since=self.servers[id(srv)])


def open_work(alg: AlgProcess) -> tuple[int, int]:
    """(sessions, data transfers) that ftpalg's log shows started and not yet ended."""
    n = Counter(e.get("event") for e in alg.events())
    return n["session_opened"] - n["session_closed"], n["data_accepted"] - n["data_finished"]


def baseline(
    alg: AlgProcess,
    servers: tuple[FtpServer, ...] = (),
    idle_fds: int | None = None,
    timeout: float = 20.0,
) -> Baseline:
    """Wait until ftpalg has finished everything earlier tests started (every session closed,
    every transfer finished; with `idle_fds`, descriptors back to that count or lingering
    closes over), then record the test's starting point."""
    if not wait_until(lambda: open_work(alg) == (0, 0), timeout):
        pytest.fail(f"ftpalg still busy from an earlier test {open_work(alg)}:\n{alg.tail()}")
    if idle_fds is not None:
        wait_until(lambda: alg.fds() <= idle_fds, LINGER + 1.0)
    return Baseline(alg, alg.mark(), alg.fds(), {id(s): s.log_mark() for s in servers})


def idle_fds(alg: AlgProcess) -> int:
    """ftpalg's descriptor count at rest: every session closed, lingering closes over. Call
    it after a first session: the event loop (libuv) opens a reserve descriptor (/dev/null)
    at its first TCP connection and keeps it."""
    baseline(alg)
    time.sleep(LINGER + 0.5)
    return alg.fds()
