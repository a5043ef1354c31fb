"""Session limit, idle timeout and upstream failures through a real ftpalg process (no root)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.proxy.conftest import Alg, free_port, launch_alg, stop


def banner(host: str, port: int) -> bytes:
    sock = socket.create_connection((host, port), timeout=5)
    data = sock.recv(200)
    sock.close()
    return data


def wait_all_sessions_closed(alg: Alg) -> None:
    """The readiness probe either became a session (opened, then closed) or was abandoned
    before its upstream connection (nothing logged): wait for the first, at most 1 s for
    the second."""
    start = time.monotonic()
    deadline = start + 5
    while True:
        text = alg.log_text()
        opened, closed = text.count('"session_opened"'), text.count('"session_closed"')
        if opened == closed and (opened or time.monotonic() - start > 1):
            return
        assert time.monotonic() < deadline, text
        time.sleep(0.05)


def test_session_limit_gives_421_and_frees_on_close(ftp_server: int, tmp_path: Path) -> None:
    alg = launch_alg(tmp_path, ftp_server, "--max-sessions", "2")
    try:
        wait_all_sessions_closed(alg)  # the readiness probe was a session too
        held = [socket.create_connection((alg.host, alg.port), timeout=5) for _ in range(2)]
        banners = [s.recv(200) for s in held]
        assert all(b.startswith(b"220") for b in banners), banners
        assert banner(alg.host, alg.port).startswith(b"421 Too many sessions")
        held.pop().close()
        deadline = time.monotonic() + 5
        while (reply := banner(alg.host, alg.port)).startswith(b"421"):
            assert time.monotonic() < deadline, reply
            time.sleep(0.05)
        assert reply.startswith(b"220")
        assert held[0].sendall(b"NOOP\r\n") is None and held[0].recv(200).startswith(b"200")
    finally:
        stop(alg.proc)


def test_idle_timeout_closes_with_421(ftp_server: int, tmp_path: Path) -> None:
    alg = launch_alg(tmp_path, ftp_server, "--idle-timeout", "1")
    try:
        sock = socket.create_connection((alg.host, alg.port), timeout=5)
        assert sock.recv(200).startswith(b"220")
        data = b""
        while chunk := sock.recv(200):
            data += chunk
        assert data.startswith(b"421 Idle timeout")
    finally:
        stop(alg.proc)


def test_upstream_refused_gives_421(tmp_path: Path) -> None:
    alg = launch_alg(tmp_path, free_port())  # nothing listens there
    try:
        reply = banner(alg.host, alg.port)
        assert reply.startswith(b"421 Service not available: cannot reach the FTP server")
        assert "upstream_connect_failed" in alg.log.read_text()
    finally:
        stop(alg.proc)


def test_fd_exhaustion_refuses_new_sessions_and_keeps_old_ones(
    ftp_server: int, tmp_path: Path
) -> None:
    alg = launch_alg(tmp_path, ftp_server, prefix=("prlimit", "--nofile=48:48", "--"))
    held: list[socket.socket] = []
    try:
        refused = b""
        for _ in range(40):  # 2 descriptors per session: the limit is reached well before
            sock = socket.create_connection((alg.host, alg.port), timeout=5)
            reply = sock.recv(200)
            if reply.startswith(b"421"):
                refused = reply
                sock.close()
                break
            assert reply.startswith(b"220"), reply
            held.append(sock)
        assert refused.startswith(b"421 Service not available"), refused
        assert len(held) >= 5
        for sock in held:  # existing sessions keep working
            sock.sendall(b"NOOP\r\n")
            assert sock.recv(200).startswith(b"200")
        assert alg.proc.poll() is None
    finally:
        for sock in held:
            sock.close()
        stop(alg.proc)
