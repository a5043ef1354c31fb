"""Fixtures for lab tests: a lab that skips (or, with FTPALG_LAB_REQUIRED=1, fails) when the
machine cannot build it, and a pool of real FTP servers started on demand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ftpalg.lab.netns import Lab, LabUnavailable
from ftpalg.lab.servers import FtpServer, start_server
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
