"""One FTP control session: the sans-I/O state machine of ftpalg.

How this works. `handle(event, now)` returns the actions to carry out, in order; time is an
argument and `next_deadline()` says when to call back with `TimerFired`. Lines are framed per
side and handled one at a time: ordinary lines are forwarded unchanged; a PORT/EPRT (client)
or 227/229 (server) is checked against policy and, when allowed, held while a listener is
opened on the receiver's face (the four faces, docs/core.md), then forwarded with only its
address/port span rewritten to "the sender's address as seen by the receiver". Later lines
from the same side wait behind a held line, so order is always kept. Likewise, while ftpalg
dials the far end of an accepted data connection, control lines from the side that connected
wait: end to end, a `226` can never overtake the data connection it reports on (a server
that sends an empty file in active mode would otherwise finish before the client is dialed).
Per-side state lives in direction.py, the data connections in datapath.py; the line
dispatch (conversion, NAT64, plain) in lines.py, the listeners of address lines in
announce.py; see expect.py for the life of an announced data connection, ledger.py for the
kernel's seq correction.
"""

from __future__ import annotations

from typing import assert_never

from ftpalg.core import policy as P
from ftpalg.core.announce import Announcing
from ftpalg.core.convert import Converter
from ftpalg.core.datapath import DataLegs
from ftpalg.core.direction import Direction, drop_sends_after_shutdown
from ftpalg.core.expect import Expectation
from ftpalg.core.framer import LineFramer
from ftpalg.core.ledger import SeqCorrection
from ftpalg.core.lines import Lines
from ftpalg.core.messages import (
    Action,
    CloseListener,
    CloseRequested,
    CloseSession,
    DataAccepted,
    DataConnected,
    DataDialed,
    DataFinished,
    DataReceived,
    DialFailed,
    Event,
    Faces,
    ListenerFailed,
    ListenerOpened,
    RejectData,
    Send,
    ShutdownWrite,
    Side,
    TimerFired,
)
from ftpalg.core.nat64 import Nat64, translated
from ftpalg.core.observations import (
    ExpectationEnded,
    ExpectationOutcome,
    ProtocolViolation,
    SessionClosed,
    UnterminatedAddressLineDropped,
)
from ftpalg.core.ports import RandomSource
from ftpalg.core.tls import TlsControl
from ftpalg.core.transfer import CommandNotes
from ftpalg.core.wire import parse_client_line, parse_server_line

CLIENT, SERVER = Side.CLIENT, Side.SERVER
__all__ = ["Faces", "Session"]


class Session(Lines, Announcing):
    def __init__(self, faces: Faces, policy: P.CorePolicy, now: float, rng: RandomSource):
        self.faces = faces
        self.policy = policy
        self.rng = rng
        self.ledger = {CLIENT: SeqCorrection(), SERVER: SeqCorrection()}
        self.closed = False
        self.expectation: Expectation | None = None
        self.notes = CommandNotes()  # USER, TYPE, transfer commands: for the xferlog
        self.data = DataLegs(self.notes, faces.client)
        self.sides = {
            side: Direction(LineFramer(policy.max_line), ep.host.version == 6)
            for side, ep in ((CLIENT, faces.client), (SERVER, faces.server))
        }
        self._last_activity = now
        self._next_listener = 1
        self._shutdowns = False  # a ShutdownWrite was output (sends to that side drop)
        self.conv = (  # data-mode conversion (convert.py): None under data_policy = client
            None
            if policy.data_policy == "client"
            else Converter(faces, policy, rng, self._new_id, self.notes)
        )
        self.tls = TlsControl(policy.tls, policy.require_tls)  # AUTH: tls.py
        cross = translated(faces.client.host, faces.server.host)  # RFC 6384: nat64.py
        self.nat = Nat64() if cross and policy.nat64 and self.conv is None else None
        self.trace = False  # set by the adapter under --log-level debug: trace.py

    # ---- public API ---------------------------------------------------------------------

    def receive(self, side: Side, data: bytes, now: float) -> list[Action]:
        return self.handle(DataReceived(side, data), now)

    def close(self, reason: str, reply: bytes | None = None) -> list[Action]:
        return self.handle(CloseRequested(reason, reply), 0.0)

    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        if self.conv is not None and not self.closed and self.conv.handle(event, now, out):
            self._drain(SERVER, now, out)  # a 2xx that waited for the join, then ...
            self._drain(CLIENT, now, out)  # ... what waited for the conversion
            return self._after_shutdown(out)
        match event:
            case DataReceived(side, data):
                self._on_data(side, data, now, out)
            case ListenerOpened():
                self._on_listener_opened(event, now, out)
            case ListenerFailed():
                self._on_listener_failed(event, now, out)
            case DataAccepted():
                if self.data.accept(event, self.expectation, self.closed, out):
                    self.expectation = None
            case DataConnected(conn):
                self._release_dial(conn, now, out)
            case DataFinished(conn):
                self._release_dial(conn, now, out)
                if self.data.finish(event, now, out):
                    self._last_activity = now
            case DataDialed(_, conn):  # a conversion's dial, after the session ended
                out.append(RejectData(conn))
            case DialFailed():
                pass
            case TimerFired():
                self._on_timer(now, out)
            case CloseRequested(reason, reply):
                if reply and not self.closed:
                    out.append(Send(CLIENT, reply))
                self._close(reason, out)
            case _:
                assert_never(event)
        return self._after_shutdown(out)

    def backlog(self, side: Side) -> int:
        """Bytes received from `side` and not yet handled (the adapter pauses reading)."""
        return self.sides[side].backlog + self.sides[side].framer.buffered

    def next_deadline(self) -> float | None:
        """The earliest of: the expectation's deadline, the idle timeout (no data connection
        alive), each unterminated line's timeout, a finished data connection's wait for its
        transfer's final reply (transfer.py). Asked after every event: no lists."""
        if self.closed:
            return None
        best = self.expectation.deadline if self.expectation else None
        conv = self.conv
        if conv is not None and conv.deadline is not None:
            best = conv.deadline if best is None or conv.deadline < best else best
        held = self.notes.deadline  # a finished data connection waiting for its reply
        if held is not None:
            best = held if best is None or held < best else best
        if not self.data.active and not (conv is not None and conv.active):
            idle = self._last_activity + self.policy.idle_timeout
            best = idle if best is None or idle < best else best
        for direction in self.sides.values():
            if direction.partial_since is not None:
                line = direction.partial_since + self.policy.line_timeout
                best = line if best is None or line < best else best
        return best

    def _partial_starts(self) -> list[float]:
        return [d.partial_since for d in self.sides.values() if d.partial_since is not None]

    def _after_shutdown(self, out: list[Action]) -> list[Action]:
        """Nothing is sent to a side after its write half was shut (see direction.py); until
        the first ShutdownWrite there is nothing to drop."""
        return drop_sends_after_shutdown(self.sides, out) if self._shutdowns else out

    # ---- control lines ------------------------------------------------------------------

    def _on_data(self, side: Side, data: bytes, now: float, out: list[Action]) -> None:
        direction = self.sides[side]
        if self.closed or direction.eof_seen:
            return
        self._last_activity = now
        if not data:
            direction.eof_seen = True
            direction.partial_since = None  # the EOF ends the last line: it cannot time out
        elif self.tls.opaque:  # TLS passed through: bytes, not lines
            out.append(Send(side.other, data))
            return
        else:
            direction.queue(data, now)
        self._drain(side, now, out)

    def _blocked(self, side: Side) -> bool:
        if self.conv is not None and self.conv.blocks(side, self.sides[side]):
            return True
        if self.nat is not None and side is CLIENT:
            held = self.sides[CLIENT].held
            busy = self.sides[SERVER].opening is not None  # a reply waits for its listener
            if self.nat.blocks(held[0][1] if held else None, busy):
                return True
        return self.sides[side].opening is not None or self.data.waiting(side)

    def _drain(self, side: Side, now: float, out: list[Action]) -> None:
        direction = self.sides[side]
        conv = self.conv if side is CLIENT else None
        while direction.held and not self.closed:
            if conv is not None:  # an ABOR behind a held transfer command cancels it
                conv.check_abort(direction, out)
            if self._blocked(side):
                break
            offset, line = direction.take()
            if self.trace:
                self._traced(side, offset, line, out)
            else:
                self._line(side, offset, line, out)
        if direction.held or self._blocked(side):
            return
        if self.tls.opaque:  # nothing is framed any more: an EOF is all that can be left
            if direction.eof_seen:
                self._finish_eof(side, out)
            return
        error = direction.framer.error
        if error is not None and not self.closed:  # after the lines before it, in order
            out.append(Send(CLIENT, P.framing_error(error)))
            out.append(ProtocolViolation(side, error))
            self._close(f"{side.value}: {error}", out)
        elif direction.eof_seen:
            self._finish_eof(side, out)

    def _finish_eof(self, side: Side, out: list[Action]) -> None:
        direction = self.sides[side]
        if direction.eof_done or self.closed:
            return
        direction.eof_done = True
        _, rest = direction.framer.eof()
        parse = parse_client_line if side is CLIENT else parse_server_line
        if rest and parse(rest, direction.v6) is not None:
            # an unterminated address line would carry an unchecked address: never pass it
            out.append(UnterminatedAddressLineDropped(side, rest))
        elif rest:  # any other unterminated last line is passed on
            out.append(Send(side.other, rest))
        out.append(ShutdownWrite(side.other))
        self._shutdowns = True
        if all(d.eof_done for d in self.sides.values()):
            self._close("closed by both peers", out)

    def _new_id(self) -> int:
        self._next_listener += 1
        return self._next_listener - 1

    def _release_dial(self, conn: int, now: float, out: list[Action]) -> None:
        side = self.data.dial_done(conn)
        if side is not None:
            self._drain(side, now, out)

    # ---- time and closing ---------------------------------------------------------------

    def _on_timer(self, now: float, out: list[Action]) -> None:
        if self.closed:
            return
        if self.conv is not None:
            self.conv.on_timer(now, out)
            self._drain(CLIENT, now, out)
        self.notes.on_timer(now, out)
        exp = self.expectation
        if exp is not None and now >= exp.deadline:
            self.expectation = None
            out.append(CloseListener(exp.listener))
            out.append(ExpectationEnded(ExpectationOutcome.EXPIRED, exp.listen))
        started = self._partial_starts()
        if started and now >= min(started) + self.policy.line_timeout:
            out.append(Send(CLIENT, P.LINE_TIMEOUT))
            self._close("line timeout", out)
        elif not self.data.active and now >= self._last_activity + self.policy.idle_timeout:
            out.append(Send(CLIENT, P.IDLE_TIMEOUT))
            self._close("idle timeout", out)

    def _close(self, reason: str, out: list[Action]) -> None:
        if self.closed:
            return
        self.closed = True
        if self.conv is not None:
            self.conv.close(out)
        self.notes.close(out)
        for direction in self.sides.values():
            if direction.opening is not None:
                out.append(CloseListener(direction.opening.listener))
                direction.opening = None
        if self.expectation is not None:
            out.append(CloseListener(self.expectation.listener))
            out.append(ExpectationEnded(ExpectationOutcome.DROPPED, self.expectation.listen))
            self.expectation = None
        out.append(SessionClosed(reason))
        out.append(CloseSession(reason))
