"""The data planes: how one control session's announced data connections are carried.

How this works. `ControlSession` hands the core's data actions to its plane through four
verbs — `open` (an expectation's endpoint: a listener, or a kernel pinhole), `close`,
`connect` (join an accepted connection to its far end) and `reject` — and the plane feeds
the outcomes back as core events (`DataAccepted`, `DataConnected`, `DataFinished`). The core
never knows which plane carries the bytes.

`RelayPlane` (this module) terminates both TCP connections: a listener per expectation
(`IP_TRANSPARENT` when its address is not local), accept, a dial from the face the far end
expects, then the splice relay (`relay.py`), in a task the gateway owns so it outlives the
session. The kernel plane is in `kernel_plane.py`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ftpalg.core.messages import (
    ConnectData,
    DataAccepted,
    DataConnected,
    DataDialed,
    DataFinished,
    DialData,
    DialFailed,
    Endpoint,
    Event,
    JoinData,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    OpenWindow,
)
from ftpalg.ops.events import Failed, Fault
from ftpalg.ops.observer import Observer
from ftpalg.proxy.relay import Handoff, relay
from ftpalg.proxy.sockets import endpoint, is_local_address, make_listener

ACCEPT_PAUSE = 0.1  # seconds a data listener is not polled after accept() failed (EMFILE)


class PlaneHost(Protocol):
    """What a data plane needs from the gateway."""

    loop: asyncio.AbstractEventLoop
    handoff: Handoff | None  # the relay worker, when big relays leave this process

    def next_conn_id(self) -> int: ...

    def spawn(self, coro: Coroutine[Any, Any, None], data: bool = False) -> None: ...

    async def dial(self, target: Endpoint, source: Endpoint | None) -> socket.socket: ...


class DataPlane(Protocol):
    name: str  # "relay" or "kernel": each data connection's log line says which

    def open(self, action: OpenListener) -> ListenerOpened | ListenerFailed: ...

    def close(self, listener: int) -> None: ...

    def connect(self, action: ConnectData) -> None: ...

    def reject(self, conn: int) -> None: ...

    def open_window(self, action: OpenWindow) -> str | None:
        """A TLS session's data window (core/tls.py): None when open, else why not."""
        ...

    def finish(self) -> None: ...


class RelayPlane:
    name = "relay"

    def __init__(self, host: PlaneHost, feed: Callable[[Event], None], observe: Observer) -> None:
        self.host = host
        self.loop = host.loop
        self.feed = feed  # the control session's handle()
        self.observe = observe
        self._listeners: dict[int, socket.socket] = {}
        self._accepted: dict[int, socket.socket] = {}

    def open(self, action: OpenListener) -> ListenerOpened | ListenerFailed:
        try:
            transparent = not is_local_address(action.host)
            sock = make_listener(action.host, action.port, transparent=transparent)
        except OSError as exc:
            return ListenerFailed(action.listener, errno.errorcode.get(exc.errno or 0, str(exc)))
        self.close(action.listener)  # a retry on another port reuses the id
        self._listeners[action.listener] = sock
        self.loop.add_reader(sock.fileno(), self._accept, action.listener)
        port = action.port or sock.getsockname()[1]  # bound where asked: no getsockname
        return ListenerOpened(action.listener, port)

    def close(self, listener: int) -> None:
        sock = self._listeners.pop(listener, None)
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def connect(self, action: ConnectData) -> None:
        accepted = self._accepted.pop(action.conn, None)
        if accepted is not None:
            self.host.spawn(self._run(action, accepted), data=True)

    def convert(self, action: DialData | JoinData) -> None:
        """Data-mode conversion (core/convert.py): a dial held until joined, or a join of
        two held connections (each accepted or dialed)."""
        if isinstance(action, DialData):
            self.host.spawn(self._dial(action), data=True)
            return
        client = self._accepted.pop(action.client, None)
        server = self._accepted.pop(action.server, None)
        if client is not None and server is not None:
            self.host.spawn(self._join(action.client, client, server), data=True)
            return
        for sock in (client, server):
            if sock is not None:
                sock.close()
        self.feed(DataFinished(action.client, 0, 0, 0.0, "connection gone before the join"))

    async def _dial(self, action: DialData) -> None:
        try:
            sock = await self.host.dial(action.target, action.source)
        except OSError as exc:
            self.feed(DialFailed(action.dial, f"connect {action.target}: {exc.strerror or exc}"))
            return
        cid = self.host.next_conn_id()
        self._accepted[cid] = sock
        self.feed(DataDialed(action.dial, cid))

    async def _join(self, conn: int, client: socket.socket, server: socket.socket) -> None:
        start = self.loop.time()
        result = await relay(client, server, loop=self.loop, handoff=self.host.handoff)
        seconds = self.loop.time() - start
        self.feed(DataFinished(conn, result.a_to_b, result.b_to_a, seconds, result.error))

    def reject(self, conn: int) -> None:
        sock = self._accepted.pop(conn, None)
        if sock is not None:
            sock.close()

    def open_window(self, action: OpenWindow) -> str | None:
        """The relay cannot follow data it cannot see: passive FTPS data then goes wherever
        the gateway's own forwarding lets it (as with the kernel helper)."""
        return "the relay data plane has no window: the gateway's forwarding rules decide"

    def finish(self) -> None:
        for listener in list(self._listeners):
            self.close(listener)
        for sock in self._accepted.values():
            sock.close()
        self._accepted.clear()

    def _accept(self, listener: int) -> None:
        sock = self._listeners.get(listener)
        if sock is None:
            return
        try:
            conn, peer = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # EMFILE and friends: the listener stays, but rests for ACCEPT_PAUSE (it stays
            # readable: polling it at once would spin, one failure per turn of the loop)
            self.observe(Failed(Fault.DATA_ACCEPT, str(exc)))
            self.loop.remove_reader(sock.fileno())
            self.loop.call_later(ACCEPT_PAUSE, self._watch, listener, sock)
            return
        conn.setblocking(False)
        cid = self.host.next_conn_id()
        self._accepted[cid] = conn
        self.feed(DataAccepted(listener, cid, endpoint(peer)))

    def _watch(self, listener: int, sock: socket.socket) -> None:
        """Poll `listener` again after an accept() failure, unless it was closed meanwhile."""
        if self._listeners.get(listener) is sock:
            self.loop.add_reader(sock.fileno(), self._accept, listener)

    async def _run(self, action: ConnectData, accepted: socket.socket) -> None:
        start = self.loop.time()
        result_error: str | None = None
        a_to_d = d_to_a = 0
        try:
            dialed = await self.host.dial(action.target, action.source)
        except OSError as exc:
            accepted.close()
            result_error = f"connect {action.target}: {exc.strerror or exc}"
        else:
            self.feed(DataConnected(action.conn))
            result = await relay(accepted, dialed, loop=self.loop, handoff=self.host.handoff)
            a_to_d, d_to_a, result_error = result.a_to_b, result.b_to_a, result.error
        seconds = self.loop.time() - start
        self.feed(DataFinished(action.conn, a_to_d, d_to_a, seconds, result_error))
