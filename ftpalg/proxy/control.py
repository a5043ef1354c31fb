"""The session driver: one FTP control session's sockets, driven by a core `Session`.

How this works. Two asyncio Protocols (client side, server side) turn socket callbacks into
core events. `handle()` is the one entry: it queues the event and, unless a run is already
going on, runs a work-list: the core's actions are carried out in order by `_execute()`, the
one place where actions become I/O. An action whose I/O has an immediate outcome (binding a
listener) returns that outcome as the next event; the core's answer to it is put at the head
of the list, so it is carried out before the rest of the batch — the order a nested call
would give, without nesting: a burst of 100,000 pipelined PORT lines costs no stack.
Events that arrive while a run is going on (a callback fired from inside a write) wait in
the queue. The data actions (open, close, connect, reject) go to the session's data plane
(`relay_plane.py`: the relay, or the kernel's pinholes), which feeds their outcomes back as
events; relays run in tasks owned by the host (the gateway), so they outlive the session.
Consecutive sends to one side leave in one write (lines that arrived together: a `150` and
its `226`); anything else that is carried out writes them first. One timer per session, at
or before `Session.next_deadline()`, moved only when that comes earlier (when it fires early,
it is set again). Reading from a side pauses while
the other side's transport is full, or while the core holds more than `BACKLOG_LIMIT` bytes
of that side's lines (waiting for a data dial): back-pressure, never unbounded memory.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol, assert_never, cast

from ftpalg.core.messages import (
    Action,
    CloseListener,
    CloseRequested,
    CloseSession,
    ConnectData,
    DataReceived,
    DialData,
    DialFailed,
    Event,
    JoinData,
    OpenListener,
    OpenWindow,
    ProtectData,
    RejectData,
    Send,
    ShutdownWrite,
    Side,
    StartTls,
    TimerFired,
)
from ftpalg.core.observations import Observation
from ftpalg.core.session import Session
from ftpalg.ops.observer import Observer
from ftpalg.proxy.relay_plane import DataPlane, PlaneHost, RelayPlane
from ftpalg.proxy.tls_upgrade import start_tls

LINGER = 2.0  # seconds a closed session waits for its peers' EOF before closing for good
BACKLOG_LIMIT = 64 * 1024  # held control bytes of one side before its reading pauses


class SessionHost(PlaneHost, Protocol):
    """What a control session needs from the gateway."""

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
        # keep the transport for the other direction (half-close); a TLS one (tls =
        # terminate) cannot half-close: it closes itself after the peer's close_notify
        can_write_eof = getattr(self.transport, "can_write_eof", None)
        return can_write_eof is None or bool(can_write_eof())

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
    def __init__(
        self,
        host: SessionHost,
        session: Session,
        observe: Observer,
        make_plane: Callable[[ControlSession], DataPlane] | None = None,
    ) -> None:
        self.host = host
        self.core = session
        self.observe = observe
        session.trace = observe.debug  # --log-level debug: command/reply lines (core/trace.py)
        self.loop = host.loop
        self.halves: dict[Side, HalfProtocol] = {}
        self.plane: DataPlane = (
            make_plane(self) if make_plane else RelayPlane(host, self.handle, observe)
        )
        self._events: deque[Event] = deque()
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self._held_back = False  # a side's reading is paused for its backlog
        self._out_side: Side | None = None  # consecutive sends to this side, not written yet
        self._out: list[bytes] = []
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
        actions = self.core.handle(event, self.loop.time())
        try:
            for index, action in enumerate(actions):
                if (outcome := self._execute(action)) is not None:
                    # the core answers before the rest of the batch: from here, a work-list
                    work: deque[Action] = deque(self.core.handle(outcome, self.loop.time()))
                    work.extend(actions[index + 1 :])
                    while work:
                        if (outcome := self._execute(work.popleft())) is not None:
                            work.extendleft(reversed(self.core.handle(outcome, self.loop.time())))
                    return
        finally:
            self._flush()

    # ---- the one place where actions become I/O -------------------------------------------

    def _flush(self) -> None:
        """Write what consecutive `Send`s to one side gave, in one write: lines that arrived
        together (a `150` and its `226`, a multi-line reply) leave together."""
        side, chunks = self._out_side, self._out
        if side is None:
            return
        self._out_side, self._out = None, []
        half = self.halves.get(side)
        if half is not None and (t := half.transport) is not None and not t.is_closing():
            t.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _execute(self, action: Action) -> Event | None:
        if isinstance(action, Send):
            if action.side is not self._out_side:
                self._flush()
                self._out_side = action.side
            self._out.append(action.data)
            return None
        if isinstance(action, Observation):
            self.observe(action)  # no I/O on the control connections: no flush needed
            return None
        self._flush()  # everything else happens after the sends before it
        match action:
            case ShutdownWrite(side):
                half = self.halves.get(side)
                if half is not None and (transport := half.writable()) is not None:
                    try:
                        transport.write_eof()
                    except (OSError, RuntimeError):
                        # a reset not noticed yet (reading paused): the stdlib loop's
                        # write_eof raises; close, and connection_lost ends the session
                        transport.close()
            case OpenListener():
                return self.plane.open(action)
            case CloseListener(listener):
                self.plane.close(listener)
            case ConnectData():
                self.plane.connect(action)
            case RejectData(conn):
                self.plane.reject(conn)
            case OpenWindow():
                why_not = self.plane.open_window(action)
                self.observe.log.info("tls_data_window", opened=why_not is None, reason=why_not)
            case StartTls(side):  # tls = terminate (tls_upgrade.py)
                start_tls(self, side)
            case ProtectData(private):  # the TLS plane's (tls_plane.py); no other plane has it
                if (protect := getattr(self.plane, "protect", None)) is not None:
                    protect(private)
            case DialData() | JoinData():  # data-mode conversion: the relay plane's
                if (convert := getattr(self.plane, "convert", None)) is not None:
                    convert(action)
                elif isinstance(action, DialData):
                    self.handle(DialFailed(action.dial, f"the {self.plane.name} plane cannot dial"))
            case CloseSession():
                self._finish()
            case Send() | Observation():  # handled above
                pass
            case _:
                assert_never(action)
        return None

    # ---- time, back-pressure and the end --------------------------------------------------

    def _arm_timer(self) -> None:
        """Keep the one timer at or before the core's next deadline. Most events only move
        the deadline later (activity): the timer stays and, when it fires early, is set
        again for the deadline of then (`_on_timer`) — no new timer per line."""
        if self.closed:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._armed_at = None
            return
        deadline = self.core.next_deadline()
        if deadline is None or (self._armed_at is not None and self._armed_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._armed_at = None
        deadline = None if self.closed else self.core.next_deadline()
        if deadline is None:
            return
        if self.loop.time() < deadline:  # moved since it was set: wait for the new one
            self._armed_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)
            return
        self.handle(TimerFired())

    def _apply_backlog(self) -> None:
        backlog = self.core.backlog
        client, server = backlog(Side.CLIENT), backlog(Side.SERVER)
        if not self._held_back and client <= BACKLOG_LIMIT and server <= BACKLOG_LIMIT:
            return  # nothing held back, nothing to hold back: the usual case
        for side, held in ((Side.CLIENT, client), (Side.SERVER, server)):
            if held > BACKLOG_LIMIT:
                self.pause_reading(side, "backlog")
            else:
                self.resume_reading(side, "backlog")
        self._held_back = any("backlog" in half.paused_for for half in self.halves.values())

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
        self.plane.finish()
        # the plane feeds this session (its `handle`): a cycle. From here the session holds
        # it weakly: a transfer still running holds it (its task, or the kernel's table of
        # running transfers) and feeds its end here; without one, both are freed at once by
        # reference counting instead of waiting for the cyclic GC.
        self.plane = cast(DataPlane, weakref.proxy(self.plane))
        for half in self.halves.values():
            if (transport := half.writable()) is not None:
                self._linger(transport)
            half.control = None  # break the half <-> session cycle: freed without the GC
        self.halves.clear()
        self.host.session_ended(self)
