"""Pipelined control input through a real ftpalg (reverse mode, loopback, pyftpdlib): many
commands in one write get every reply, in order, and the session goes on afterwards."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.conftest import Alg, launch_alg, stop

BURST = 1000


def read_replies(sock: socket.socket, count: int) -> list[bytes]:
    """`count` final reply lines (`ddd text`), in arrival order; continuation lines of
    multi-line replies are skipped."""
    buf = b""
    replies: list[bytes] = []
    while len(replies) < count:
        chunk = sock.recv(1 << 16)
        assert chunk, f"connection closed after {len(replies)} of {count} replies"
        buf += chunk
        *lines, buf = buf.split(b"\r\n")
        replies += [line for line in lines if line[:3].isdigit() and line[3:4] == b" "]
    assert buf == b"" and len(replies) == count, (buf, len(replies))
    return replies


def logged_in(alg: Alg) -> socket.socket:
    sock = socket.create_connection((alg.host, alg.port), timeout=30)
    sock.sendall(b"USER user\r\nPASS secret\r\nTYPE I\r\n")
    assert [r[:3] for r in read_replies(sock, 4)] == [b"220", b"331", b"230", b"200"]
    return sock


def events(alg: Alg) -> list[dict[str, object]]:
    return [json.loads(x) for x in alg.log_text().splitlines() if x.startswith("{")]


def no_internal_errors(alg: Alg) -> None:
    logged = events(alg)
    assert not [e for e in logged if e.get("level") == "error"], logged[-5:]
    assert "Traceback" not in alg.log_text()


def test_pipelined_pasv_and_other_commands_all_answered_in_order(reverse_alg: Alg) -> None:
    sock = logged_in(reverse_alg)
    with sock:
        # PASV, PWD and NOOP alternate, so a lost, duplicated or reordered reply shows
        commands = [b"PASV", b"PWD", b"NOOP"] * BURST
        sock.sendall(b"".join(c + b"\r\n" for c in commands))
        replies = read_replies(sock, len(commands))
        assert [r[:3] for r in replies] == [b"227", b"257", b"200"] * BURST
        pasv = [r for r in replies if r.startswith(b"227")]
        assert all(b"(127,0,0,2," in r for r in pasv), pasv[:3]  # rewritten to the gateway
        sock.sendall(b"NOOP\r\n")
        assert read_replies(sock, 1)[0].startswith(b"200")
    no_internal_errors(reverse_alg)


class EchoServer:
    """An FTP "server" that answers every line at once, in order, with `200 <the line as
    received>`: it shows what ftpalg forwarded (rewritten PORT lines included) and never
    reorders or drops a reply, unlike a real server that acts on each PORT."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:  # ftpalg's readiness probe is a session too
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 echo.\r\n")
            for line in lines:
                conn.sendall(b"200 " + line.rstrip(b"\r\n") + b"\r\n")

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def echo_alg(tmp_path: Path) -> Iterator[Alg]:
    server = EchoServer()
    alg = launch_alg(tmp_path, server.port)
    try:
        yield alg
    finally:
        stop(alg.proc)
        server.close()


def test_pipelined_port_lines_all_rewritten_and_answered_in_order(echo_alg: Alg) -> None:
    """Each PORT opens a listener on the gateway, replaces the one before and is forwarded
    rewritten, while the lines behind it wait: one write, every reply, in order."""
    sock = socket.create_connection((echo_alg.host, echo_alg.port), timeout=30)
    with sock:
        assert read_replies(sock, 1) == [b"220 echo."]
        client_host, _ = sock.getsockname()
        port_line = f"PORT {client_host.replace('.', ',')},156,64".encode()
        commands = [line for n in range(BURST) for line in (port_line, b"NOOP %d" % n)]
        sock.sendall(b"".join(c + b"\r\n" for c in commands))
        replies = read_replies(sock, len(commands))
        assert replies[1::2] == [b"200 NOOP %d" % n for n in range(BURST)]
        ports = [r.removeprefix(b"200 PORT ").split(b",") for r in replies[0::2]]
        assert all(p[:4] == [b"127", b"0", b"0", b"1"] for p in ports), replies[:2]
        sock.sendall(b"NOOP last\r\n")
        assert read_replies(sock, 1) == [b"200 NOOP last"]
    no_internal_errors(echo_alg)
    # each PORT armed an expectation: rewritten, or (its port already inside the data-port
    # range, on loopback where the faces are one address) passed on unchanged
    announced = ("rewrite", "announce_unchanged")
    rewrites = [e for e in events(echo_alg) if e["event"] in announced]
    assert len(rewrites) == BURST
    replaced = [e for e in events(echo_alg) if e["event"] == "expectation_replaced"]
    assert len(replaced) == BURST - 1
