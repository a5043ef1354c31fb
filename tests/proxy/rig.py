"""An in-process ftpalg on loopback: the real `Gateway`, `ControlSession` and core `Session`,
driven from the test through real sockets, with every observation and log line recorded.

Layout (reverse mode, so no root is needed): the test's client (127.0.0.1) connects to the
gateway's listener on 127.0.0.2; the gateway connects to the test's server (127.0.0.1); the
test drives both ends by hand. The one stand-in is `GatedGateway.dial`: a *data* dial
waits for a future the test controls (`DialRequest.release`) before the real dial runs, so a
test can hold a dial open for as long as it needs (the core's "lines wait behind a dial").
Each test runs on the stdlib loop and on uvloop (what the daemon uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import pytest
import uvloop

from ftpalg.core.messages import Endpoint, Side
from ftpalg.core.observations import Observation
from ftpalg.ops.config import Config, HostPort
from ftpalg.ops.observer import Observer
from ftpalg.proxy.control import ControlSession, HalfProtocol
from ftpalg.proxy.gateway import Gateway
from ftpalg.proxy.sockets import make_listener

CLIENT_HOST = "127.0.0.1"
GATEWAY_HOST = "127.0.0.2"
SERVER_HOST = "127.0.0.1"
Runner = Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]


@pytest.fixture(params=["asyncio", "uvloop"], name="run")
def run_fixture(request: pytest.FixtureRequest) -> Iterator[Runner]:
    """Run a coroutine function on a fresh stdlib loop or uvloop."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def _run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main())

    yield _run


# ---- what ftpalg said -------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    level: str
    event: str
    fields: dict[str, Any]


@dataclass
class Records:
    lines: list[Line] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)

    def of(self, kind: type[Any]) -> list[Any]:
        return [o for o in self.observations if isinstance(o, kind)]

    def errors(self) -> list[Line]:
        return [line for line in self.lines if line.level == "error"]

    def events(self, name: str) -> list[Line]:
        return [line for line in self.lines if line.event == name]


class RecordingLog:
    """A structlog stand-in: every line (level, event, bound context + fields) is kept."""

    def __init__(self, records: Records, context: dict[str, Any] | None = None) -> None:
        self.records = records
        self.context = context or {}

    def bind(self, **context: Any) -> RecordingLog:
        return RecordingLog(self.records, self.context | context)

    def _line(self, level: str, event: str, **fields: Any) -> None:
        self.records.lines.append(Line(level, event, self.context | fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._line("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._line("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._line("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._line("error", event, **fields)


def recording_observer() -> tuple[Observer, Records]:
    records = Records()
    return Observer(RecordingLog(records), [records.observations.append]), records


# ---- the gateway with a gate on data dials ----------------------------------------------------


@dataclass
class DialRequest:
    target: Endpoint
    source: Endpoint
    release: asyncio.Future[None]  # set_result(None): dial for real; set_exception: fail


class GatedGateway(Gateway):
    """The real gateway; a data dial (one with a source) first waits for the test."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, observe: Observer):
        super().__init__(config, loop, observe)
        self.dials: asyncio.Queue[DialRequest] = asyncio.Queue()

    async def dial(self, target: Endpoint, source: Endpoint | None) -> socket.socket:
        if source is not None:
            request = DialRequest(target, source, self.loop.create_future())
            self.dials.put_nowait(request)
            await request.release
        return await super().dial(target, source)


# ---- sockets ----------------------------------------------------------------------------------


def open_fds() -> int:
    """This process's descriptors, except /dev/null: libuv (uvloop) keeps one open per loop
    from the first stream on (`emfile_fd`, its own EMFILE reserve), until the loop closes."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own descriptor is gone by now
            count += os.readlink(f"/proc/self/fd/{fd}") != os.devnull
    return count


SMALL_BUFFER = 16 * 1024  # the kernel doubles it; autotuning is off for a socket that sets it


def small_buffers(sock: socket.socket) -> None:
    """Small kernel buffers on a test end, so ftpalg's own transport fills up quickly."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)


def listener(host: str, small: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small:  # before listen(): accepted sockets inherit it
        small_buffers(sock)
    sock.bind((host, 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


async def until(cond: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Wait for `cond()` (a liveness bound, not a speed requirement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def recv_exact(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, min(size - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def recv_line(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while not data.endswith(b"\n"):
        chunk = await loop.sock_recv(sock, 1)
        if not chunk:
            break
        data += chunk
    return data


async def recv_all(sock: socket.socket) -> bytes:
    """Everything up to EOF."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        data += chunk
    return bytes(data)


def nothing_waiting(sock: socket.socket) -> bool:
    """True when `sock` (non-blocking) has no byte to read right now and is not at EOF."""
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    return False


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


_NUMBERS = re.compile(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


def parse_hostport(line: bytes) -> tuple[str, int]:
    """The address of a PORT line or a 227 reply."""
    m = _NUMBERS.search(line)
    assert m is not None, line
    n = [int(x) for x in m.groups()]
    return ".".join(map(str, n[:4])), n[4] * 256 + n[5]


def port_numbers(host: str, port: int) -> str:
    return ",".join([*host.split("."), str(port >> 8), str(port & 0xFF)])


# ---- one rig per test -------------------------------------------------------------------------


@dataclass
class Conn:
    """One control session: the test's two ends and the session in between."""

    client: socket.socket  # the test's client end
    server: socket.socket  # the test's server end
    control: ControlSession

    def half(self, side: Side) -> HalfProtocol:
        return self.control.halves[side]


class Rig:
    def __init__(self, small: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.observe, self.records = recording_observer()
        self.server_listener = listener(SERVER_HOST, small)
        self.data_listener = listener(SERVER_HOST)  # the far end of data dials
        self.data_port: int = self.data_listener.getsockname()[1]
        self.control_listener = make_listener(IPv4Address(GATEWAY_HOST), 0, transparent=False)
        self.address = self.control_listener.getsockname()
        config = Config(
            listen=(Endpoint(IPv4Address(GATEWAY_HOST), self.address[1]),),
            upstream=HostPort(SERVER_HOST, self.server_listener.getsockname()[1]),
        )
        self.gateway = GatedGateway(config, self.loop, self.observe)
        self.sockets: list[socket.socket] = []
        self.small = small
        self.loop_errors: list[dict[str, Any]] = []  # what escaped into the event loop
        self.loop.set_exception_handler(lambda _, context: self.loop_errors.append(context))

    async def start(self) -> Rig:
        await self.gateway.start([self.control_listener])
        return self

    def track(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock

    async def connect(self) -> Conn:
        """A control session; the banner `220 ready` has passed."""
        client = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        if self.small:
            small_buffers(client)
        client.bind((CLIENT_HOST, 0))
        client.setblocking(False)
        before = set(self.gateway.sessions)
        await self.loop.sock_connect(client, self.address)
        server, _ = await self.loop.sock_accept(self.server_listener)
        self.track(server).setblocking(False)
        await until(lambda: set(self.gateway.sessions) - before, "the session to start")
        (control,) = set(self.gateway.sessions) - before
        await self.loop.sock_sendall(server, b"220 ready\r\n")
        assert await recv_line(client) == b"220 ready\r\n"
        return Conn(client, server, control)

    async def passive(self, conn: Conn) -> tuple[socket.socket, tuple[str, int]]:
        """The server announces the data listener (227); the client connects where the
        rewritten 227 says. Returns the client's data socket and that address."""
        port = self.data_port
        reply = f"227 Entering Passive Mode ({port_numbers(SERVER_HOST, port)}).\r\n"
        await self.loop.sock_sendall(conn.server, reply.encode())
        rewritten = await recv_line(conn.client)
        assert rewritten.startswith(b"227 "), rewritten
        where = parse_hostport(rewritten)
        assert where[0] == GATEWAY_HOST, rewritten  # the client's view of the server
        data = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        data.bind((CLIENT_HOST, 0))
        data.setblocking(False)
        return data, where

    async def active(self, conn: Conn) -> tuple[socket.socket, tuple[str, int]]:
        """The client announces its data listener (PORT); the server connects where the
        rewritten PORT says. Returns the server's data socket and that address."""
        port = self.data_port
        line = f"PORT {port_numbers(CLIENT_HOST, port)}\r\n"
        await self.loop.sock_sendall(conn.client, line.encode())
        rewritten = await recv_line(conn.server)
        assert rewritten.startswith(b"PORT "), rewritten
        where = parse_hostport(rewritten)
        data = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        data.bind((SERVER_HOST, 0))
        data.setblocking(False)
        return data, where

    async def ended(self, conn: Conn) -> None:
        """Wait until the session is gone and its data tasks are done."""
        await until(lambda: conn.control.closed, "the session to close")
        await until(lambda: conn.control not in self.gateway.sessions, "session_ended")
        await until(lambda: not self.gateway.tasks, "the gateway's tasks to finish")

    def close_test_ends(self) -> None:
        """Close every socket of the test's own (the ends ftpalg talks to)."""
        for sock in self.sockets:
            sock.close()

    async def settled(self, baseline: int) -> None:
        """The test's ends closed; wait until ftpalg holds no descriptor beyond `baseline`
        (a closed session's transports linger up to `control.LINGER` for the peer's EOF)."""
        self.close_test_ends()
        await until(lambda: open_fds() == baseline, f"descriptors back to {baseline}")
        assert not self.loop_errors, self.loop_errors

    async def close(self) -> None:
        await self.gateway.shutdown(0.1)
        self.close_test_ends()
        for sock in (self.server_listener, self.data_listener):
            sock.close()


async def rig(small: bool = False) -> Rig:
    """A started rig; `small`: the test's control ends get small kernel buffers."""
    return await Rig(small).start()
