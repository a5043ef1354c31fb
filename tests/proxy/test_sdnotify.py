"""systemd's notify protocol (ftpalg/ops/sdnotify.py) against a real ftpalg process: a
datagram socket plays systemd's NOTIFY_SOCKET. READY=1 arrives once ftpalg serves; SIGTERM
brings STOPPING=1 with EXTEND_TIMEOUT_USEC = grace period + 15 s (conf/ftpalg.service is
Type=notify, so a long drain is not cut short by TimeoutStopSec)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from ftpalg.ops import sdnotify
from tests.proxy.conftest import launch_alg, stop


def messages(sock: socket.socket, until: str) -> dict[str, str]:
    found: dict[str, str] = {}
    while until not in found:
        data = sock.recv(4096).decode()
        found |= dict(line.split("=", 1) for line in data.splitlines())
    return found


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_then_stopping_with_the_drain_time(
    ftp_server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(10)
    if abstract:
        name = f"ftpalg-test-{tmp_path.name}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = tmp_path / "notify"
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    with sock:
        alg = launch_alg(tmp_path, ftp_server)  # --grace-period 2
        try:
            ready = messages(sock, "READY")
            assert ready["READY"] == "1" and ready["MAINPID"] == str(alg.proc.pid), ready
            alg.proc.send_signal(signal.SIGTERM)
            stopping = messages(sock, "STOPPING")
            assert stopping["EXTEND_TIMEOUT_USEC"] == str(17 * 1_000_000), stopping
            assert alg.proc.wait(20) == 0
        finally:
            stop(alg.proc)


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")  # not a socket systemd would give
    assert sdnotify.stopping(1.0) is False
