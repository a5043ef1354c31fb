"""The session driver: one FTP control session's sockets, driven by a core `Session`.

How this works. Two asyncio Protocols (client side, server side) turn socket callbacks into
core events. `handle()` is the one entry: it queues the event and, unless a run is already
going on, runs a work-list: the core's actions are carried out in order by `_execute()`, the
one place where actions become I/O. An action whose I/O has an immediate outcome (binding a
listener) returns that outcome as the next event; the core's answer to it is put at the head
of the list, so it is carried out before the rest of the batch — the order a nested call
would give, without nesting: a burst of 100,000 pipelined PORT lines costs no stack.
Events that arrive while a run is going on (a callback fired from inside a write) wait in
the queue. Data connections are accepted by `loop.add_reader` on the listener, dialed and
relayed in tasks owned by the host (the gateway), so they outlive the control session.
One timer per session, armed at `Session.next_deadline()`. Reading from a side pauses while
the other side's transport is full, or while the core holds more than `BACKLOG_LIMIT` bytes
of that side's lines (waiting for a data dial): back-pressure, never unbounded memory.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from collections.abc import Coroutine
from ipaddress import ip_address
from typing import Any, Protocol, assert_never, cast

from ftpalg.core.messages import (
    Action,
    CloseListener,
    CloseRequested,
    CloseSession,
    ConnectData,
    DataAccepted,
    DataConnected,
    DataFinished,
    DataReceived,
    Endpoint,
    Event,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    RejectData,
    Send,
    ShutdownWrite,
    Side,
    TimerFired,
)
from ftpalg.core.observations import Observation
from ftpalg.core.session import Session
from ftpalg.ops.events import Failed, Fault
from ftpalg.ops.observer import Observer
from ftpalg.proxy.relay import relay
from ftpalg.proxy.sockets import is_local_address, make_listener

LINGER = 2.0  # seconds a closed session waits for its peers' EOF before closing for good
BACKLOG_LIMIT = 64 * 1024  # held control bytes of one side before its reading pauses
ACCEPT_PAUSE = 0.1  # seconds a data listener is not polled after accept() failed (EMFILE)


def endpoint(sockaddr: Any) -> Endpoint:
    """A socket address tuple as an Endpoint."""
    return Endpoint(ip_address(sockaddr[0]), int(sockaddr[1]))


class SessionHost(Protocol):
    """What a control session needs from the gateway."""

    loop: asyncio.AbstractEventLoop

    def next_conn_id(self) -> int: ...

    def spawn(self, coro: Coroutine[Any, Any, None], data: bool = False) -> None: ...

    async def dial(self, target: Endpoint, source: Endpoint | None) -> socket.socket: ...

    def session_ended(self, control: ControlSession) -> None: ...


class HalfProtocol(asyncio.Protocol):
    """One side of the control connection; forwards everything to the ControlSession.

    A client half is created before its session is wired: it pauses reading at once and
    keeps what may still arrive (`early`) until the gateway hands it the session (`start`).
    """

    def __init__(self, control: ControlSession | None, side: Side) -> None:
        self.control = control
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.paused_for: set[str] = set()  # why reading is paused: "peer", "backlog"
        self.early = b""  # received before the session was handed over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self.control is not None:
            self.control.attach(self.side, self)
        else:
            self.transport.pause_reading()

    def start(self, control: ControlSession) -> None:
        """Hand over to `control`: what arrived early first, then reading resumes."""
        self.control = control
        if self.early:
            data, self.early = self.early, b""
            control.handle(DataReceived(self.side, data))
        if self.lost:
            control.connection_lost(self.side, None)
        elif not self.paused_for and (transport := self.writable()) is not None:
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.control is not None:
            self.control.handle(DataReceived(self.side, data))
        elif self.transport is not None and not self.lost:
            self.early += data  # before the session stands; reading is paused meanwhile

    def eof_received(self) -> bool:
        if self.control is None or self.control.closed:
            return False  # lingering after the session ended: close now
        self.control.handle(DataReceived(self.side, b""))
        return True  # keep the transport for the other direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.control is not None:
            self.control.connection_lost(self.side, exc)

    def pause_writing(self) -> None:
        if self.control is not None:
            self.control.pause_reading(self.side.other, "peer")

    def resume_writing(self) -> None:
        if self.control is not None:
            self.control.resume_reading(self.side.other, "peer")

    def writable(self) -> asyncio.Transport | None:
        t = self.transport
        return t if t is not None and not t.is_closing() else None


class ControlSession:
    def __init__(self, host: SessionHost, session: Session, observe: Observer) -> None:
        self.host = host
        self.core = session
        self.observe = observe
        self.loop = host.loop
        self.halves: dict[Side, HalfProtocol] = {}
        self._listeners: dict[int, socket.socket] = {}
        self._accepted: dict[int, socket.socket] = {}
        self._events: deque[Event] = deque()
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self.closed = False

    # ---- inputs ---------------------------------------------------------------------------

    def attach(self, side: Side, half: HalfProtocol) -> None:
        self.halves[side] = half

    def connection_lost(self, side: Side, exc: Exception | None) -> None:
        if self.closed:
            return
        if exc is not None:
            self.observe.log.info("control_connection_lost", side=side.value, error=str(exc))
        self.handle(DataReceived(side, b""))
        # the other half may still hold data for this one: end the session (a no-op if the
        # EOF above already closed it)
        self.handle(CloseRequested(f"{side.value} connection lost"))

    def close(self, reason: str, reply: bytes | None = None) -> None:
        self.handle(CloseRequested(reason, reply))

    def handle(self, event: Event) -> None:
        """Feed one event to the core and carry out everything that follows from it."""
        self._events.append(event)
        if self._running:
            return  # the run below this call takes it, in order
        self._running = True
        try:
            while self._events:
                self._run(self._events.popleft())
        finally:
            self._running = False
        self._arm_timer()
        self._apply_backlog()

    def _run(self, event: Event) -> None:
        work: deque[Action] = deque(self.core.handle(event, self.loop.time()))
        while work:
            outcome = self._execute(work.popleft())
            if outcome is not None:  # the core answers before the rest of the batch
                work.extendleft(reversed(self.core.handle(outcome, self.loop.time())))

    # ---- the one place where actions become I/O -------------------------------------------

    def _execute(self, action: Action) -> Event | None:
        match action:
            case Send(side, data):
                half = self.halves.get(side)
                if half is not None and (transport := half.writable()) is not None:
                    transport.write(data)
            case ShutdownWrite(side):
                half = self.halves.get(side)
                if half is not None and (transport := half.writable()) is not None:
                    try:
                        transport.write_eof()
                    except (OSError, RuntimeError):
                        # a reset not noticed yet (reading paused): the stdlib loop's
                        # write_eof raises; close, and connection_lost ends the session
                        transport.close()
            case Observation():
                self.observe(action)
            case OpenListener():
                return self._open_listener(action)
            case CloseListener(listener):
                self._close_listener(listener)
            case ConnectData():
                accepted = self._accepted.pop(action.conn, None)
                if accepted is not None:
                    self.host.spawn(self._run_data(action, accepted), data=True)
            case RejectData(conn):
                sock = self._accepted.pop(conn, None)
                if sock is not None:
                    sock.close()
            case CloseSession():
                self._finish()
            case _:
                assert_never(action)
        return None

    # ---- listeners and data connections ---------------------------------------------------

    def _open_listener(self, action: OpenListener) -> ListenerOpened | ListenerFailed:
        try:
            transparent = not is_local_address(action.host)
            sock = make_listener(action.host, action.port, transparent=transparent)
        except OSError as exc:
            return ListenerFailed(action.listener, errno.errorcode.get(exc.errno or 0, str(exc)))
        self._close_listener(action.listener)  # a retry on another port reuses the id
        self._listeners[action.listener] = sock
        self.loop.add_reader(sock.fileno(), self._accept, action.listener)
        return ListenerOpened(action.listener, sock.getsockname()[1])

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
        self.handle(DataAccepted(listener, cid, endpoint(peer)))

    def _watch(self, listener: int, sock: socket.socket) -> None:
        """Poll `listener` again after an accept() failure, unless it was closed meanwhile."""
        if self._listeners.get(listener) is sock:
            self.loop.add_reader(sock.fileno(), self._accept, listener)

    async def _run_data(self, action: ConnectData, accepted: socket.socket) -> None:
        start = self.loop.time()
        result_error: str | None = None
        a_to_d = d_to_a = 0
        try:
            dialed = await self.host.dial(action.target, action.source)
        except OSError as exc:
            accepted.close()
            result_error = f"connect {action.target}: {exc.strerror or exc}"
        else:
            self.handle(DataConnected(action.conn))
            result = await relay(accepted, dialed)
            a_to_d, d_to_a, result_error = result.a_to_b, result.b_to_a, result.error
        seconds = self.loop.time() - start
        self.handle(DataFinished(action.conn, a_to_d, d_to_a, seconds, result_error))

    # ---- time, back-pressure and the end --------------------------------------------------

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
        self.handle(TimerFired())

    def _apply_backlog(self) -> None:
        for side in Side:
            if self.core.backlog(side) > BACKLOG_LIMIT:
                self.pause_reading(side, "backlog")
            else:
                self.resume_reading(side, "backlog")

    def pause_reading(self, side: Side, reason: str) -> None:
        half = self.halves.get(side)
        if half is None or reason in half.paused_for:
            return
        half.paused_for.add(reason)
        if len(half.paused_for) == 1 and (transport := half.writable()) is not None:
            transport.pause_reading()

    def resume_reading(self, side: Side, reason: str) -> None:
        half = self.halves.get(side)
        if half is None or reason not in half.paused_for:
            return
        half.paused_for.discard(reason)
        if not half.paused_for and (transport := half.writable()) is not None:
            transport.resume_reading()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Half-close, discard what still arrives, close at the peer's EOF or after LINGER:
        closing with unread input would send a reset that can destroy our last reply."""
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        if not transport.is_reading():
            transport.resume_reading()  # paused by back-pressure: read the peer's EOF
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
            if (transport := half.writable()) is not None:
                self._linger(transport)
            half.control = None  # break the half <-> session cycle: freed without the GC
        self.halves.clear()
        self.host.session_ended(self)
