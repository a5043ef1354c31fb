"""The session driver: one FTP control session's sockets, driven by a core `Session`.

How this works. Two asyncio Protocols (client side, server side) feed received bytes to the
core; every batch of actions the core returns goes through `dispatch()`, the one place where
actions become I/O. Listener binds happen synchronously inside dispatch and their outcome is
fed straight back to the core, so a held PORT/227 line is released in the same call. Data
connections are accepted by `loop.add_reader` on the listener, dialed and relayed in tasks
owned by the gateway, so they outlive the control session (SPEC §5). One timer per session,
armed at `Session.next_deadline()`. Reading pauses when the other side cannot keep up.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, cast

from ftpalg.core.messages import (
    Action,
    CloseListener,
    CloseSession,
    ConnectData,
    DataAccepted,
    DataConnected,
    DataFinished,
    Endpoint,
    Event,
    ListenerFailed,
    ListenerOpened,
    Log,
    OpenListener,
    RejectData,
    Send,
    ShutdownWrite,
    Side,
    TimerFired,
)
from ftpalg.core.session import Session
from ftpalg.proxy.relay import relay
from ftpalg.proxy.sockets import is_local_address, make_listener

LINGER = 2.0  # seconds a closed session waits for its peers' EOF before closing for good

if TYPE_CHECKING:
    from ftpalg.proxy.gateway import Gateway


def endpoint(sockaddr: Any) -> Endpoint:
    """A socket address tuple as an Endpoint (IPv4-mapped IPv6 shown as IPv4)."""
    host = ip_address(sockaddr[0])
    if host.version == 6 and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return Endpoint(host, int(sockaddr[1]))


class HalfProtocol(asyncio.Protocol):
    """One side of the control connection; forwards everything to the ControlSession.

    A client half is created before its session exists: it pauses reading at once; the
    gateway attaches the session once the upstream connection stands (or answers 421).
    """

    def __init__(self, control: ControlSession | None, side: Side, gateway: Gateway) -> None:
        self.control = control
        self.side = side
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self.control is not None:
            self.control.attach(self.side, self)
        else:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.control is not None:
            self.control.feed_data(self.side, data)

    def eof_received(self) -> bool:
        if self.control is None or self.control.closed:
            return False  # lingering after the session ended: close now
        self.control.feed_data(self.side, b"")
        return True  # keep the transport for the other direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.control is not None:
            self.control.connection_lost(self.side, exc)

    def pause_writing(self) -> None:
        if self.control is not None:
            self.control.pause_reading(self.side.other)

    def resume_writing(self) -> None:
        if self.control is not None:
            self.control.resume_reading(self.side.other)


class ControlSession:
    def __init__(self, gateway: Gateway, sid: str, session: Session, log: Any) -> None:
        self.gateway = gateway
        self.sid = sid
        self.core = session
        self.log = log
        self.loop = gateway.loop
        self.halves: dict[Side, HalfProtocol] = {}
        self._listeners: dict[int, socket.socket] = {}
        self._accepted: dict[int, socket.socket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self.closed = False

    # ---- inputs ---------------------------------------------------------------------------

    def attach(self, side: Side, half: HalfProtocol) -> None:
        self.halves[side] = half

    def feed_data(self, side: Side, data: bytes) -> None:
        self.handle_event(None, side, data)

    def handle_event(
        self, event: Event | None, side: Side = Side.CLIENT, data: bytes = b""
    ) -> None:
        now = self.loop.time()
        if event is None:
            actions = self.core.receive(side, data, now)
        else:
            actions = self.core.handle(event, now)
        self.dispatch(actions)

    def connection_lost(self, side: Side, exc: Exception | None) -> None:
        if self.closed:
            return
        if exc is not None:
            self.log.info("control_connection_lost", side=side.value, error=str(exc))
        self.dispatch(self.core.receive(side, b"", self.loop.time()))
        if not self.closed:  # the other half may still hold data for this one: end it
            self.dispatch(self.core.close(f"{side.value} connection lost"))

    def close(self, reason: str, reply: bytes | None = None) -> None:
        self.dispatch(self.core.close(reason, reply))

    # ---- the one dispatch function --------------------------------------------------------

    def dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                half = self.halves.get(action.side)
                if half is not None and half.transport and not half.transport.is_closing():
                    half.transport.write(action.data)
            elif isinstance(action, Log):
                getattr(self.log, action.level)(action.event, **action.fields)
            elif isinstance(action, OpenListener):
                self._open_listener(action)
            elif isinstance(action, CloseListener):
                self._close_listener(action.listener)
            elif isinstance(action, ConnectData):
                self._connect_data(action)
            elif isinstance(action, RejectData):
                sock = self._accepted.pop(action.conn, None)
                if sock is not None:
                    sock.close()
            elif isinstance(action, ShutdownWrite):
                half = self.halves.get(action.side)
                if half is not None and half.transport and not half.transport.is_closing():
                    half.transport.write_eof()
            elif isinstance(action, CloseSession):
                self._finish()
        self._arm_timer()

    # ---- listeners and data connections ---------------------------------------------------

    def _open_listener(self, action: OpenListener) -> None:
        try:
            transparent = not is_local_address(action.host)
            sock = make_listener(action.host, action.port, transparent=transparent)
        except OSError as exc:
            self.handle_event(
                ListenerFailed(action.listener, errno.errorcode.get(exc.errno or 0, str(exc)))
            )
            return
        self._close_listener(action.listener)  # a retry on another port reuses the id
        self._listeners[action.listener] = sock
        self.loop.add_reader(sock.fileno(), self._accept, action.listener)
        self.handle_event(ListenerOpened(action.listener, sock.getsockname()[1]))

    def _close_listener(self, listener: int) -> None:
        sock = self._listeners.pop(listener, None)
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def _accept(self, listener: int) -> None:
        sock = self._listeners.get(listener)
        if sock is None:
            return
        try:
            conn, peer = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and friends: leave the listener, log once per accept
            self.log.warning("data_accept_failed", error=str(exc))
            return
        conn.setblocking(False)
        cid = self.gateway.next_conn_id()
        self._accepted[cid] = conn
        self.handle_event(DataAccepted(listener, cid, endpoint(peer)))

    def _connect_data(self, action: ConnectData) -> None:
        accepted = self._accepted.pop(action.conn, None)
        if accepted is None:
            return
        self.gateway.spawn(self._run_data(action, accepted), data=True)

    async def _run_data(self, action: ConnectData, accepted: socket.socket) -> None:
        start = self.loop.time()
        result_error: str | None = None
        a_to_d = d_to_a = 0
        try:
            dialed = await self.gateway.dial(action.target, action.source)
        except OSError as exc:
            accepted.close()
            result_error = f"connect {action.target}: {exc.strerror or exc}"
        else:
            self.handle_event(DataConnected(action.conn))
            result = await relay(accepted, dialed)
            a_to_d, d_to_a, result_error = result.a_to_b, result.b_to_a, result.error
        seconds = self.loop.time() - start
        self.handle_event(DataFinished(action.conn, a_to_d, d_to_a, seconds, result_error))

    # ---- time and the end -----------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = None if self.closed else self.core.next_deadline()
        if deadline == self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_at = None
        self.handle_event(TimerFired())

    def pause_reading(self, side: Side) -> None:
        half = self.halves.get(side)
        if half is not None and half.transport is not None and not half.transport.is_closing():
            half.transport.pause_reading()

    def resume_reading(self, side: Side) -> None:
        half = self.halves.get(side)
        if half is not None and half.transport is not None and not half.transport.is_closing():
            half.transport.resume_reading()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Half-close, discard what still arrives, close at the peer's EOF or after LINGER:
        closing with unread input would send a reset that can destroy our last reply."""
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self.loop.call_later(LINGER, transport.close)

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        for listener in list(self._listeners):
            self._close_listener(listener)
        for sock in self._accepted.values():
            sock.close()
        self._accepted.clear()
        for half in self.halves.values():
            if half.transport is not None and not half.transport.is_closing():
                self._linger(half.transport)
            half.control = None  # break the half <-> session cycle: freed without the GC
        self.halves.clear()
        self.gateway.session_ended(self)
