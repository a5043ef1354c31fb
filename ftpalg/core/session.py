"""One FTP control session: the sans-I/O state machine of ftpalg.

How this works. `handle(event, now)` returns the actions to carry out, in order; time is an
argument and `next_deadline()` says when to call back with `TimerFired`. Lines are framed per
side and handled one at a time: ordinary lines are forwarded unchanged; a PORT/EPRT (client)
or 227/229 (server) is checked against policy and, when allowed, held while a listener is
opened on the receiver's face (the four faces of SPEC §2), then forwarded with only its
address/port span rewritten to "the sender's address as seen by the receiver". Later lines
from the same side wait behind a held line, so order is always kept. Likewise, while ftpalg
dials the far end of an accepted data connection, control lines from the side that connected
wait: end to end, a `226` can never overtake the data connection it reports on (a server
that sends an empty file in active mode would otherwise finish before the client is dialed).
See expect.py for the life of the announced data connection, ledger.py for the kernel's seq
correction record.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ftpalg.core import policy as P
from ftpalg.core.datapath import DataPath
from ftpalg.core.expect import DataConnection, Expectation, PendingOpen
from ftpalg.core.framer import LineFramer
from ftpalg.core.ledger import SeqCorrection
from ftpalg.core.messages import (
    Action,
    CloseListener,
    CloseSession,
    DataAccepted,
    DataConnected,
    DataFinished,
    DataReceived,
    Endpoint,
    Event,
    ListenerFailed,
    ListenerOpened,
    Log,
    OpenListener,
    Send,
    ShutdownWrite,
    Side,
    TimerFired,
)
from ftpalg.core.ports import PortChooser, RandomSource
from ftpalg.core.rewrite import Unrepresentable, replacement, splice
from ftpalg.core.transfer import CommandNotes
from ftpalg.core.wire import Malformed, Match, parse_client_line, parse_server_line

CLIENT, SERVER = Side.CLIENT, Side.SERVER


@dataclass(frozen=True, slots=True)
class Faces:
    client: Endpoint  # the client's real address
    server: Endpoint  # the real upstream server
    server_face: Endpoint  # what the client believes it talks to
    client_face: Endpoint  # what the server sees the client as


class Session(DataPath):
    def __init__(self, faces: Faces, policy: P.CorePolicy, now: float, rng: RandomSource):
        self.faces = faces
        self.policy = policy
        self.rng = rng
        self.ledger = {CLIENT: SeqCorrection(), SERVER: SeqCorrection()}
        self.closed = False
        self.expectation: Expectation | None = None
        self._v6 = {CLIENT: faces.client.host.version == 6, SERVER: faces.server.host.version == 6}
        self._framers = {side: LineFramer(policy.max_line) for side in Side}
        self._held: dict[Side, deque[tuple[int, bytes]]] = {side: deque() for side in Side}
        self._opening: dict[Side, PendingOpen | None] = {CLIENT: None, SERVER: None}
        self._eof_seen = {CLIENT: False, SERVER: False}
        self._eof_done = {CLIENT: False, SERVER: False}
        self._data: dict[int, DataConnection] = {}
        self._dialing: dict[int, Side] = {}  # conn -> the side whose lines wait for the dial
        self._write_shut: set[Side] = set()  # sides we passed an EOF to
        self._last_activity = now
        self._partial_since: dict[Side, float | None] = {CLIENT: None, SERVER: None}
        self._next_listener = 1
        self.notes = CommandNotes()  # USER, TYPE, transfer commands: for the xferlog

    # ---- public API ---------------------------------------------------------------------

    def receive(self, side: Side, data: bytes, now: float) -> list[Action]:
        return self.handle(DataReceived(side, data), now)

    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, DataReceived):
            self._on_data(event.side, event.data, now, out)
        elif isinstance(event, ListenerOpened):
            self._on_listener_opened(event, now, out)
        elif isinstance(event, ListenerFailed):
            self._on_listener_failed(event, now, out)
        elif isinstance(event, DataAccepted):
            self._on_data_accepted(event, now, out)
        elif isinstance(event, DataConnected):
            self._release_dial(event.conn, now, out)
        elif isinstance(event, DataFinished):
            self._release_dial(event.conn, now, out)
            self._on_data_finished(event, now, out)
        elif isinstance(event, TimerFired):
            self._on_timer(now, out)
        return self._after_shutdown(out)

    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        deadlines = [self.expectation.deadline] if self.expectation else []
        if not self._data:
            deadlines.append(self._last_activity + self.policy.idle_timeout)
        started = [t for t in self._partial_since.values() if t is not None]
        deadlines += [t + self.policy.line_timeout for t in started]
        return min(deadlines) if deadlines else None

    def close(self, reason: str, reply: bytes | None = None) -> list[Action]:
        """Close from outside (shutdown, upstream gone): optional reply to the client first."""
        out: list[Action] = [Send(CLIENT, reply)] if reply and not self.closed else []
        self._close(reason, out)
        return self._after_shutdown(out)

    def _after_shutdown(self, out: list[Action]) -> list[Action]:
        """Nothing is sent to a side after its write half was shut (the peer's EOF was passed
        on): a late reply of ftpalg's own (421 on shutdown or idle, 500 on a bad line) is
        dropped; the peer could not read it, and the transport must not write after EOF."""
        kept: list[Action] = []
        for action in out:
            if isinstance(action, ShutdownWrite):
                self._write_shut.add(action.side)
            elif isinstance(action, Send) and action.side in self._write_shut:
                continue
            kept.append(action)
        return kept

    # ---- control lines ------------------------------------------------------------------

    def _on_data(self, side: Side, data: bytes, now: float, out: list[Action]) -> None:
        if self.closed or self._eof_seen[side]:
            return
        self._last_activity = now
        if not data:
            self._eof_seen[side] = True
            self._drain(side, now, out)
            return
        framer = self._framers[side]
        self._held[side].extend(framer.feed(data))
        if not framer.buffered:
            self._partial_since[side] = None
        elif self._partial_since[side] is None:  # a line started: it must end in time
            self._partial_since[side] = now
        self._drain(side, now, out)

    def _blocked(self, side: Side) -> bool:
        return self._opening[side] is not None or side in self._dialing.values()

    def _drain(self, side: Side, now: float, out: list[Action]) -> None:
        held = self._held[side]
        while held and not self._blocked(side) and not self.closed:
            offset, line = held.popleft()
            self._line(side, offset, line, now, out)
        if held or self._blocked(side):
            return
        error = self._framers[side].error
        if error is not None and not self.closed:  # after the lines before it, in order
            out.append(Send(CLIENT, P.framing_error(error)))
            out.append(Log("protocol_violation", "warning", {"side": side.value, "reason": error}))
            self._close(f"{side.value}: {error}", out)
        elif self._eof_seen[side]:
            self._finish_eof(side, out)

    def _finish_eof(self, side: Side, out: list[Action]) -> None:
        if self._eof_done[side] or self.closed:
            return
        self._eof_done[side] = True
        _, rest = self._framers[side].eof()
        parse = parse_client_line if side is CLIENT else parse_server_line
        if rest and parse(rest, self._v6[side]) is not None:
            # an unterminated address line would carry an unchecked address: never pass it
            fields = {"side": side.value, "line": rest}
            out.append(Log("unterminated_address_line_dropped", "warning", fields))
        elif rest:  # any other unterminated last line is passed on
            out.append(Send(side.other, rest))
        out.append(ShutdownWrite(side.other))
        if all(self._eof_done.values()):
            self._close("closed by both peers", out)

    def _line(self, side: Side, offset: int, line: bytes, now: float, out: list[Action]) -> None:
        parse = parse_client_line if side is CLIENT else parse_server_line
        parsed = parse(line, self._v6[side])
        if parsed is None:
            if side is CLIENT:
                self.notes.client_line(line)
            out.append(Send(side.other, line))
        elif isinstance(parsed, Malformed):
            fields = {"kind": parsed.kind.value, "reason": parsed.reason, "line": line}
            if side is CLIENT:  # never let the server act on an address we did not understand
                out.append(Send(CLIENT, P.malformed_reply(parsed.kind, parsed.reason)))
                out.append(Log("malformed_command_refused", "warning", fields))
            else:
                out.append(Send(CLIENT, line))
                out.append(Log("malformed_reply_forwarded", "warning", fields))
        else:
            self._address_line(side, offset, line, parsed, out)

    def _address_line(
        self, side: Side, offset: int, line: bytes, match: Match, out: list[Action]
    ) -> None:
        f = self.faces
        if side is CLIENT:
            refusal = P.refusal_for_client(match, f.client.host, self.policy)
            if refusal is not None:
                out.append(Send(CLIENT, refusal))
                bounce = match.address != f.client.host and not self.policy.loose
                reason = "bounce" if bounce else "low_port"
                fields = {"line": line, "reply": refusal, "reason": reason}
                out.append(Log("command_refused", "warning", fields))
                return
            assert match.address is not None
            face, accept_from, dial_from = f.client_face.host, f.server.host, f.server_face.host
            target = Endpoint(match.address, match.port)
        else:
            host = P.server_target(match, f.server.host, self.policy)
            if match.address is not None and match.address != f.server.host:
                out.append(
                    Log("reply_address_mismatch", "warning", {"line": line, "using": str(host)})
                )
            face, accept_from, dial_from = f.server_face.host, f.client.host, f.client_face.host
            target = Endpoint(host, match.port)
        try:
            replacement(match.kind, face, match.port)
        except Unrepresentable as exc:
            out.append(Log("rewrite_impossible", "warning", {"line": line, "reason": str(exc)}))
            out.append(Send(CLIENT, P.UNREPRESENTABLE if side is CLIENT else line))
            return
        listener = self._next_listener
        self._next_listener += 1
        chooser = PortChooser(match.port, self.policy.data_ports, self.rng, self.policy.port_tries)
        self._opening[side] = PendingOpen(
            listener, side, offset, line, match, face, accept_from, target, dial_from, chooser,
            match.port,
        )  # fmt: skip
        out.append(OpenListener(listener, face, match.port))

    # ---- listeners ----------------------------------------------------------------------

    def _pending(self, listener: int) -> PendingOpen | None:
        for pending in self._opening.values():
            if pending is not None and pending.listener == listener:
                return pending
        return None

    def _on_listener_opened(self, ev: ListenerOpened, now: float, out: list[Action]) -> None:
        pending = self._pending(ev.listener)
        if pending is None or self.closed:
            out.append(CloseListener(ev.listener))
            return
        side, match = pending.side, pending.match
        self._opening[side] = None
        new_line = splice(pending.line, match, replacement(match.kind, pending.face, ev.port))
        delta = len(new_line) - len(pending.line)
        self.ledger[side].record(pending.offset + 1, delta)  # relative TCP sequence number
        if self.expectation is not None:
            out.append(CloseListener(self.expectation.listener))
            out.append(
                Log("expectation_replaced", "info", {"listen": str(self.expectation.listen)})
            )
        listen = Endpoint(pending.face, ev.port)
        self.notes.announced()
        self.expectation = Expectation(
            ev.listener, match.kind, listen, pending.accept_from, pending.target,
            pending.dial_from, now + self.policy.expect_timeout,
        )  # fmt: skip
        out.append(Send(side.other, new_line))
        out.append(
            Log("rewrite", "info", {
                "kind": match.kind.value, "before": pending.line, "after": new_line,
                "listen": str(listen), "target": str(pending.target), "delta": delta,
                "seq_offset": self.ledger[side].offset_after,
            })
        )  # fmt: skip
        self._drain(side, now, out)

    def _on_listener_failed(self, ev: ListenerFailed, now: float, out: list[Action]) -> None:
        pending = self._pending(ev.listener)
        if pending is None or self.closed:
            return
        port = pending.chooser.next_port()
        if port is not None:
            pending.port = port
            out.append(OpenListener(pending.listener, pending.face, port))
            return
        self._opening[pending.side] = None
        reply = P.NO_PORT_FOR_ACTIVE if pending.side is CLIENT else P.NO_PORT_FOR_PASSIVE
        out.append(Send(CLIENT, reply))
        out.append(Log("no_data_port", "warning", {"line": pending.line, "error": ev.error}))
        self._drain(pending.side, now, out)

    # ---- time and closing ---------------------------------------------------------------

    def _on_timer(self, now: float, out: list[Action]) -> None:
        if self.closed:
            return
        exp = self.expectation
        if exp is not None and now >= exp.deadline:
            self.expectation = None
            out.append(CloseListener(exp.listener))
            out.append(Log("expectation_expired", "info", {"listen": str(exp.listen)}))
        started = [t for t in self._partial_since.values() if t is not None]
        if started and now >= min(started) + self.policy.line_timeout:
            out.append(Send(CLIENT, P.LINE_TIMEOUT))
            self._close("line timeout", out)
        elif not self._data and now >= self._last_activity + self.policy.idle_timeout:
            out.append(Send(CLIENT, P.IDLE_TIMEOUT))
            self._close("idle timeout", out)

    def _close(self, reason: str, out: list[Action]) -> None:
        if self.closed:
            return
        self.closed = True
        for side, pending in self._opening.items():
            if pending is not None:
                out.append(CloseListener(pending.listener))
                self._opening[side] = None
        dropped = self.expectation is not None  # for the pending-expectations gauge
        if self.expectation is not None:
            out.append(CloseListener(self.expectation.listener))
            self.expectation = None
        fields = {"reason": reason, "expectation_dropped": dropped}
        out.append(Log("session_closed", "info", fields))
        out.append(CloseSession(reason))
