"""Session limit, idle timeout and upstream failures through a real ftpalg process (no root)."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ftpalg.core import policy as P
from tests.proxy.conftest import Alg, free_port, launch_alg, stop


def banner(host: str, port: int) -> bytes:
    sock = socket.create_connection((host, port), timeout=5)
    data = sock.recv(200)
    sock.close()
    return data


def log_events(alg: Alg) -> list[dict[str, Any]]:
    return [json.loads(x) for x in alg.log_text().splitlines() if x.startswith("{")]


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
        held[0].sendall(b"NOOP\r\n")
        assert held[0].recv(200).startswith(b"200")  # the held session carries on
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


def test_activity_moves_the_idle_timeout_later(ftp_server: int, tmp_path: Path) -> None:
    """The session's one timer stays at the first deadline while activity moves it later;
    when it fires early it waits for the deadline of then: a session busy past several
    idle timeouts stays, and the 421 comes one timeout after its last command."""
    alg = launch_alg(tmp_path, ftp_server, "--idle-timeout", "1")
    try:
        sock = socket.create_connection((alg.host, alg.port), timeout=5)
        assert read_reply(sock).startswith(b"220")
        for _ in range(6):  # 2.4 s of activity: past two idle timeouts from the start
            time.sleep(0.4)
            assert command(sock, b"NOOP").startswith(b"200")
        last = time.monotonic()
        assert read_reply(sock).startswith(b"421 Idle timeout")
        assert 0.8 < time.monotonic() - last < 3
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


def read_reply(sock: socket.socket) -> bytes:
    """One single-line reply, up to and including its CRLF (b"" at EOF)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def command(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_reply(sock)


def test_fd_exhaustion_refuses_new_sessions_and_keeps_old_ones(
    ftp_server: int, tmp_path: Path
) -> None:
    """With no descriptor left, accept() fails with EMFILE and the acceptor answers from its
    spare descriptor (`P.OUT_OF_RESOURCES`, log `session_refused`). A session holds two
    descriptors (client, upstream), so sessions alone may fill the table to one short of
    the limit: then the next connection is accepted and only its upstream dial fails (a
    different 421, not the path under test); a PASV on a held session then takes that last
    descriptor for its data listener, and the connection after it meets accept()'s EMFILE."""
    alg = launch_alg(tmp_path, ftp_server, prefix=("prlimit", "--nofile=48:48", "--"))
    dial_failed = P.upstream_failed(os.strerror(errno.EMFILE))
    held: list[socket.socket] = []
    passive: list[socket.socket] = []  # held sessions with a data listener open
    try:
        wait_all_sessions_closed(alg)  # the readiness probe was a session too
        refused = b""
        for _ in range(40):  # ~20 sessions fit in 48 descriptors
            sock = socket.create_connection((alg.host, alg.port), timeout=5)
            reply = read_reply(sock)
            if reply.startswith(b"220"):
                held.append(sock)
                continue
            assert sock.recv(200) == b""  # closed: its descriptor is free again
            sock.close()
            if reply != dial_failed or len(passive) == 3:
                refused = reply
                break
            # exactly one descriptor was free: a data listener takes it
            sock = next(s for s in held if s not in passive)
            assert command(sock, b"USER user").startswith(b"331")
            assert command(sock, b"PASS secret").startswith(b"230")
            pasv = command(sock, b"PASV")
            assert pasv.startswith(b"227 "), pasv
            passive.append(sock)
        assert refused == P.OUT_OF_RESOURCES, (refused, len(held), len(passive))
        assert refused.startswith(b"421 ")
        deadline = time.monotonic() + 5
        while not any(
            e.get("event") == "session_refused" and e.get("reason") == "out of file descriptors"
            for e in log_events(alg)
        ):
            assert time.monotonic() < deadline, alg.log_text()[-2000:]
            time.sleep(0.05)
        assert len(held) >= 5
        for sock in held:  # existing sessions keep working
            assert command(sock, b"NOOP").startswith(b"200")
        assert alg.proc.poll() is None
        held.pop(0).close()  # two descriptors free again: new sessions are admitted
        deadline = time.monotonic() + 5
        while (reply := banner(alg.host, alg.port)).startswith(b"421"):
            assert time.monotonic() < deadline, reply
            time.sleep(0.05)
        assert reply.startswith(b"220"), reply
    finally:
        for sock in held:
            sock.close()
        stop(alg.proc)
