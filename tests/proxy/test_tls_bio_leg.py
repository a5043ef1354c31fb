"""`tls_upstream` pieces on loopback, against a real TLS server (Python's ssl in a thread):
the client leg (proxy/tls_bio_leg.py) resumes a given TLS session on a new connection —
what vsftpd's require_ssl_reuse demands of every data connection — on TLS 1.2 and 1.3;
downloads end at the server's close_notify, uploads end with ours; a failed handshake
reaches the app as connection_lost; and the reply splitter of proxy/tls_upstream.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ftpalg.proxy.tls_bio_leg import BioTlsLeg
from ftpalg.proxy.tls_upstream import split_reply

DATA = os.urandom(3 << 20)


@pytest.fixture(scope="module")
def server_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    tmp = tmp_path_factory.mktemp("leg")
    cert, key = tmp / "c.pem", tmp / "k.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run([*argv, "-subj", "/CN=t", "-keyout", key, "-out", cert], check=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(Path(cert), Path(key))
    return ctx


def client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def serve(ctx: ssl.SSLContext, handle: Callable[[socket.socket], object], n: int = 1) -> int:
    """A TLS server thread for `n` connections; its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with listener:
            for _ in range(n):
                conn, _ = listener.accept()
                conn.settimeout(10)
                try:
                    handle(conn)
                except (OSError, ssl.SSLError) as exc:
                    print("server:", repr(exc))
                finally:
                    conn.close()

    threading.Thread(target=run, daemon=True).start()
    return int(listener.getsockname()[1])


class App(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.made = self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def open_leg(
    port: int, app: App, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> BioTlsLeg:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    leg = BioTlsLeg(app, ctx, session)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: leg, sock=sock)
    return leg


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_second_connection_resumes_the_first_ones_session(
    server_context: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    reused: list[bool] = []

    def download(conn: socket.socket) -> None:
        tls = server_context.wrap_socket(conn, server_side=True)
        reused.append(tls.session_reused)
        tls.sendall(DATA)
        tls.unwrap()  # our close_notify, and the client's

    async def main() -> None:
        port = serve(server_context, download, n=2)
        ctx = client_context(version)
        first = App()
        leg = await open_leg(port, first, ctx)
        assert await asyncio.wait_for(first.lost, 10) is None
        assert first.made and first.eof and hashlib.sha256(first.data).digest() == DATA_SHA
        session = leg.session()
        assert session is not None
        second = App()
        leg2 = await open_leg(port, second, ctx, session)
        assert await asyncio.wait_for(second.lost, 10) is None
        assert bytes(second.data) == DATA and leg2.tls.session_reused
        assert leg2.get_extra_info("ssl_object").version() == leg2.tls.version()

    asyncio.run(main())
    assert reused == [False, True]


DATA_SHA = hashlib.sha256(DATA).digest()


def test_an_upload_ends_with_our_close_notify(server_context: ssl.SSLContext) -> None:
    got: list[bytes] = []

    def upload(conn: socket.socket) -> None:
        tls = server_context.wrap_socket(conn, server_side=True)
        data = bytearray()
        while chunk := tls.recv(1 << 16):  # b"" only at the client's close_notify
            data += chunk
        got.append(bytes(data))
        tls.unwrap()

    async def main() -> None:
        port = serve(server_context, upload)
        app = App()
        leg = await open_leg(port, app, client_context(ssl.TLSVersion.TLSv1_3))
        while not app.made:
            await asyncio.sleep(0.01)
        assert not leg.can_write_eof()
        with pytest.raises(NotImplementedError):
            leg.write_eof()
        leg.pause_reading()
        assert not leg.is_reading()
        leg.resume_reading()
        for i in range(0, len(DATA), 1 << 18):
            leg.write(DATA[i : i + (1 << 18)])
        assert leg.get_write_buffer_size() >= 0
        leg.close()
        leg.write(b"after close: dropped")
        leg.close()  # twice: nothing more
        assert leg.is_closing()
        await asyncio.wait_for(app.lost, 10)

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:  # the server thread reads on
        time.sleep(0.01)
    assert got == [DATA]


def test_a_failed_handshake_reaches_the_app(server_context: ssl.SSLContext) -> None:
    def garbage(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" + bytes(64))

    async def main() -> None:
        port = serve(server_context, garbage)
        app = App()
        leg = await open_leg(port, app, client_context(ssl.TLSVersion.TLSv1_3))
        assert leg.handshake is not None
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(leg.handshake, 10)
        lost = await asyncio.wait_for(app.lost, 10)
        assert isinstance(lost, ssl.SSLError) and not app.made
        assert leg.session() is None

    asyncio.run(main())


def test_a_server_that_closes_during_the_handshake() -> None:
    async def main() -> None:
        port = serve(ssl.create_default_context(), lambda conn: conn.recv(4096))
        app = App()
        leg = await open_leg(port, app, client_context(ssl.TLSVersion.TLSv1_2))
        lost = await asyncio.wait_for(app.lost, 10)
        assert isinstance(lost, (ConnectionError, ssl.SSLError)), lost
        assert leg.handshake is not None and leg.handshake.done()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("buf", "reply", "rest"),
    [
        (b"220 ready\r\n", b"220 ready\r\n", b""),
        (b"220 ready", None, None),
        (b"220-one\r\n220-two\r\n", None, None),
        (
            b"220-one\r\n 220 inside\r\n220 end\r\nNEXT",
            b"220-one\r\n 220 inside\r\n220 end\r\n",
            b"NEXT",
        ),
        (b"234 go\r\n200 more\r\n", b"234 go\r\n", b"200 more\r\n"),
        (b"", None, None),
    ],
)
def test_split_reply(buf: bytes, reply: bytes | None, rest: bytes | None) -> None:
    got = split_reply(buf)
    assert got == (None if reply is None else (reply, rest))


def test_the_server_side_leg_takes_an_upload_to_the_last_byte(
    server_context: ssl.SSLContext,
) -> None:
    """ftpalg as the TLS server (a PROT P data connection's client leg): a client that
    sends, says close_notify and closes at once (as curl does) loses nothing, also while
    the leg's reading is paused (back-pressure) as it closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def client() -> None:
        ctx = client_context(ssl.TLSVersion.TLSv1_3)
        tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
        tls.sendall(DATA)
        with contextlib.suppress(OSError):
            tls.unwrap()
        tls.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=client, daemon=True).start()
        conn, _ = await loop.sock_accept(listener)
        app = App()
        leg = BioTlsLeg(app, server_context, server_side=True)
        await loop.connect_accepted_socket(lambda: leg, sock=conn)
        leg.pause_reading()  # everything waits in the kernel meanwhile
        await asyncio.sleep(0.3)
        leg.resume_reading()
        assert await asyncio.wait_for(app.lost, 10) is None
        assert app.made and app.eof and bytes(app.data) == DATA

    asyncio.run(main())
    listener.close()
