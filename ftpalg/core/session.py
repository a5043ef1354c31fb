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
Per-side state lives in direction.py, the data connections in datapath.py; see expect.py
for the life of an announced data connection, ledger.py for the kernel's seq correction.
"""

from __future__ import annotations

from typing import assert_never

from ftpalg.core import policy as P
from ftpalg.core.convert import Converter
from ftpalg.core.datapath import DataLegs
from ftpalg.core.direction import Direction, drop_sends_after_shutdown
from ftpalg.core.expect import Expectation, PendingOpen
from ftpalg.core.framer import LineFramer
from ftpalg.core.ledger import SeqCorrection
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
    Endpoint,
    Event,
    Faces,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    RejectData,
    Send,
    ShutdownWrite,
    Side,
    TimerFired,
)
from ftpalg.core.nat64 import Nat64, rendered, strip_telnet, translated
from ftpalg.core.observations import (
    CommandRefused,
    ExpectationEnded,
    ExpectationOutcome,
    MalformedCommandRefused,
    MalformedReplyForwarded,
    NoDataPort,
    ProtocolViolation,
    ReplyAddressMismatch,
    RewriteImpossible,
    Rewritten,
    SessionClosed,
    UnterminatedAddressLineDropped,
)
from ftpalg.core.ports import PortChooser, RandomSource
from ftpalg.core.rewrite import Unrepresentable, replacement, splice
from ftpalg.core.tls import TlsControl
from ftpalg.core.transfer import CommandNotes
from ftpalg.core.wire import Malformed, Match, parse_client_line, parse_server_line

CLIENT, SERVER = Side.CLIENT, Side.SERVER
__all__ = ["Faces", "Session"]


class Session:
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
                if self.data.finish(event, out):
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
        alive), each unterminated line's timeout. Asked after every event: no lists."""
        if self.closed:
            return None
        best = self.expectation.deadline if self.expectation else None
        conv = self.conv
        if conv is not None and conv.deadline is not None:
            best = conv.deadline if best is None or conv.deadline < best else best
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

    def _line(self, side: Side, offset: int, line: bytes, out: list[Action]) -> None:
        conv, nat = self.conv, self.nat
        if nat is not None:
            self._nat64_line(nat, side, offset, line, out)
        elif conv is None:
            self._plain_line(side, offset, line, out)
        elif side is CLIENT:
            if not conv.client_line(line, out, self._last_activity):
                mark = len(out)
                self._plain_line(side, offset, line, out)
                conv.sent(out, mark)
        else:  # replies are counted; a reply may let a held client command go
            if not conv.server_line(line, out):
                self._plain_line(side, offset, line, out)
            self._drain(CLIENT, self._last_activity, out)

    def _nat64_line(
        self, nat: Nat64, side: Side, offset: int, line: bytes, out: list[Action]
    ) -> None:
        line = strip_telnet(side, line, out)
        if not line:
            return
        if side is CLIENT:
            if not nat.client_line(line, out):
                mark = len(out)
                self._plain_line(side, offset, line, out)
                nat.sent(out, mark)
            return
        listen = self.expectation.listen if self.expectation is not None else None
        if not nat.server_line(line, listen, out):
            self._plain_line(side, offset, line, out)
        self._drain(CLIENT, self._last_activity, out)  # a reply may release a held command

    def _plain_line(self, side: Side, offset: int, line: bytes, out: list[Action]) -> None:
        parse = parse_client_line if side is CLIENT else parse_server_line
        parsed = parse(line, self.sides[side].v6)
        if parsed is None:
            if side is CLIENT:
                if self.tls.client_line(line, out, self.sides[CLIENT]):
                    return
                self.notes.client_line(line)
            elif self.tls.terminate is not None:  # FEAT: our TLS features added
                line = self.tls.terminate.server_line(line)
            out.append(Send(side.other, line))
            if side is SERVER and self.tls.accepts(line):
                self.tls.go_opaque(self.sides, self.faces, out)
        elif isinstance(parsed, Malformed):
            if side is CLIENT:  # never let the server act on an address we did not understand
                out.append(Send(CLIENT, P.malformed_reply(parsed.kind, parsed.reason)))
                out.append(MalformedCommandRefused(parsed.kind, parsed.reason, line))
            else:
                out.append(Send(CLIENT, line))
                out.append(MalformedReplyForwarded(parsed.kind, parsed.reason, line))
        else:
            self._address_line(side, offset, line, parsed, out)

    def _address_line(
        self, side: Side, offset: int, line: bytes, match: Match, out: list[Action]
    ) -> None:
        plan = P.plan_data(match, self.faces, self.policy)
        if isinstance(plan, P.Refused):
            out.append(Send(CLIENT, plan.reply))
            out.append(CommandRefused(plan.reason, line, plan.reply))
            return
        if side is SERVER and match.address not in (None, self.faces.server.host):
            out.append(ReplyAddressMismatch(line, str(plan.target.host)))
        render, shown = None, plan.shown
        if self.nat is not None:
            render, shown = self.nat.render(match, plan.target.host, shown)
        try:
            if render is None:
                replacement(match.kind, shown, match.port)
        except Unrepresentable as exc:
            out.append(RewriteImpossible(line, str(exc)))
            out.append(Send(CLIENT, P.UNREPRESENTABLE if side is CLIENT else line))
            return
        listener = self._next_listener
        self._next_listener += 1
        policy = self.policy
        chooser = PortChooser(
            match.port, policy.data_ports, self.rng, policy.port_tries, policy.strict_data_ports
        )
        self.sides[side].opening = PendingOpen(
            listener,
            side,
            offset,
            line,
            match,
            plan.face,
            shown,
            plan.accept_from,
            plan.target,
            plan.dial_from,
            chooser,
            render,
        )
        out.append(
            OpenListener(
                listener, plan.face, chooser.first, plan.accept_from, plan.target, plan.dial_from
            )
        )

    # ---- listeners ----------------------------------------------------------------------

    def _pending(self, listener: int) -> PendingOpen | None:
        for direction in self.sides.values():
            if direction.opening is not None and direction.opening.listener == listener:
                return direction.opening
        return None

    def _on_listener_opened(self, ev: ListenerOpened, now: float, out: list[Action]) -> None:
        pending = self._pending(ev.listener)
        if pending is None or self.closed:
            out.append(CloseListener(ev.listener))
            return
        side, match = pending.side, pending.match
        self.sides[side].opening = None
        if pending.render is not None:  # NAT64: a 227 shown as a 229, an EPRT sent as PORT
            new_line = rendered(pending.render, pending.shown, ev.port)
        else:
            new_line = splice(pending.line, match, replacement(match.kind, pending.shown, ev.port))
        delta = len(new_line) - len(pending.line)
        self.ledger[side].record(pending.offset + 1, delta)  # relative TCP sequence number
        if self.expectation is not None:
            out.append(CloseListener(self.expectation.listener))
            out.append(ExpectationEnded(ExpectationOutcome.REPLACED, self.expectation.listen))
        listen = Endpoint(pending.face, ev.port)
        self.notes.announced()
        deadline = now + self.policy.expect_timeout
        self.expectation = Expectation(
            ev.listener,
            match.kind,
            listen,
            pending.accept_from,
            pending.target,
            pending.dial_from,
            deadline,
        )
        out.append(Send(side.other, new_line))
        if self.conv is not None and side is CLIENT:
            self.conv.owners.append("client")
        if self.nat is not None and side is CLIENT:
            self.nat.announced(match.kind, pending.render, listen, out)
        offset_after = self.ledger[side].offset_after
        out.append(
            Rewritten(
                match.kind, pending.line, new_line, listen, pending.target, delta, offset_after
            )
        )
        self._drain_after_open(side, now, out)

    def _on_listener_failed(self, ev: ListenerFailed, now: float, out: list[Action]) -> None:
        pending = self._pending(ev.listener)
        if pending is None or self.closed:
            return
        port = pending.chooser.next_port()
        if port is not None:
            p = pending
            out.append(OpenListener(p.listener, p.face, port, p.accept_from, p.target, p.dial_from))
            return
        self.sides[pending.side].opening = None
        reply = P.NO_PORT_FOR_ACTIVE if pending.side is CLIENT else P.NO_PORT_FOR_PASSIVE
        out.append(Send(CLIENT, reply))
        out.append(NoDataPort(pending.line, ev.error))
        self._drain_after_open(pending.side, now, out)

    def _drain_after_open(self, side: Side, now: float, out: list[Action]) -> None:
        self._drain(side, now, out)
        if self.nat is not None and side is SERVER:  # ftpalg's own answers waited for it
            self._drain(CLIENT, now, out)

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
