"""The invariant checker shared by the fuzz target and the property tests.

How this works. `Checker` is fed the same events as a `Session`, one step at a time, together
with the actions the session returned for it, and keeps its own model of what was fed: each
side's bytes framed into lines (LF-terminated, `max_line` and NUL limits), which lines are
still held (behind a listener being opened or a data dial), the armed expectation, the
running data connections, the clocks. From that model it knows what every line must become
and walks the actions with a cursor, so a mismatch names the invariant it breaks:

- ORDER: lines from a side reach the other side in the order they were received, never
  before a line ahead of them is done, never while their side waits for a listener or a dial.
- LOSS: every complete line is handled in the step that makes it handleable (its bytes
  arrived and nothing holds it): an ordinary line is forwarded exactly once; only the session
  closing (or a framing error before it) may drop it.
- DUPLICATION: no line is forwarded twice.
- REWRITE: a PORT/EPRT/227/229 is forwarded byte-exact as `rewrite.splice(line, match,
  rewrite.replacement(kind, face, bound port))`: the bytes outside the parsed span unchanged,
  and the new line parses (wire parsers) to the face and the bound port.
- REPLY: ftpalg's own replies are exactly the policy.py constant or builder for the
  situation (malformed_reply(kind, reason), the refusal, NO_PORT_*, UNREPRESENTABLE,
  framing_error(reason), IDLE_TIMEOUT, LINE_TIMEOUT, the reply of a CloseRequested).
- SHUT: nothing is sent to a side after ftpalg passed it an EOF (ShutdownWrite).
- CLOSED: after CloseSession only reports of running data connections (DataEnded) and the
  clean-up of late resources (CloseListener for a listener bound too late, RejectData for a
  late connection) follow.
- DATA: listeners are asked on the receiver's face (first the announced port — with
  `strict_data_ports` only when it is inside the range, else a port from the range — then fresh
  ports from the data-port range, at most `port_tries` of them); a 227 shows the policy's
  `announce` address of the face's IP version instead of the face when there is one; a data
  connection is taken only from the expected peer, once, dialed from the right face (active
  keeps the server's source port, passive uses port 0); the others are rejected as theft or
  stale.
- TIMER: expiry, the line timeout and the idle timeout fire exactly when due.
- REPLY-ORDER: a data connection's `DataEnded` comes with its transfer's final reply (its
  `result` that reply when not 2xx and the connection had no error), or `REPLY_WAIT` after
  the connection ended, or at the session's end; a 530 to USER/PASS/ACCT or a 5xx to PASS is
  a `LoginFailed` (tests/core/replies_model.py).
- OBSERVATION: every observation the model expects in a step is there with its fields, and no
  other (their position inside the step is the playbooks' business, tests/core/test_session.py).
SHUT, CLOSED and NUL are checked on the raw actions too, independent of the model.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from ipaddress import IPv6Address
from typing import Any, NoReturn

from ftpalg.core import policy as P
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
    Faces,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    OpenWindow,
    RejectData,
    Send,
    ShutdownWrite,
    Side,
    TimerFired,
)
from ftpalg.core.observations import (
    CommandRefused,
    DataEnded,
    DataMode,
    DataRejected,
    DataStarted,
    ExpectationEnded,
    ExpectationOutcome,
    LoginFailed,
    MalformedCommandRefused,
    MalformedReplyForwarded,
    NoDataPort,
    Observation,
    ProtocolViolation,
    Refusal,
    ReplyAddressMismatch,
    RewriteImpossible,
    Rewritten,
    SessionClosed,
    TlsPassthrough,
    TlsRefused,
    UnterminatedAddressLineDropped,
)
from ftpalg.core.policy import CorePolicy
from ftpalg.core.rewrite import Unrepresentable, replacement, splice
from ftpalg.core.tls import REFUSED, is_auth
from ftpalg.core.wire import Address, Kind, Malformed, Match, parse_client_line, parse_server_line
from tests.core.replies_model import RepliesModel
from tests.core.terminate_model import Answer, TerminateModel

CLIENT, SERVER = Side.CLIENT, Side.SERVER


class InvariantViolation(AssertionError):
    """A step broke an invariant; the message starts with its name (ORDER, LOSS, ...)."""


def parse(side: Side, line: bytes, v6: bool) -> Match | Malformed | None:
    return parse_client_line(line, v6) if side is CLIENT else parse_server_line(line, v6)


@dataclass
class _Opening:
    """An address line held while its listener is being bound."""

    listener: int
    line: bytes
    match: Match
    face: Address  # where the listener goes
    shown: Address  # the address written into the line
    accept_from: Address
    target: Endpoint
    dial_from: Address
    tried: set[int]  # the ports asked for so far
    retries: int = 0


@dataclass(frozen=True)
class _Expectation:
    listener: int
    kind: Kind
    listen: Endpoint
    accept_from: Address
    target: Endpoint
    dial_from: Address
    deadline: float


@dataclass
class _SideModel:
    """One side's bytes as the model frames them, and what became of its lines."""

    side: Side
    v6: bool
    max_line: int
    buf: bytearray = field(default_factory=bytearray)  # the unterminated rest
    error: str | None = None  # framing error: nothing after it is framed
    partial_since: float | None = None  # when the first byte of `buf` arrived
    held: deque[bytes] = field(default_factory=deque)  # complete lines not yet handled
    handled: list[bytes] = field(default_factory=list)  # lines handled, in order
    opening: _Opening | None = None
    eof_seen: bool = False
    eof_done: bool = False
    shut: bool = False  # ftpalg passed an EOF *to* this side
    seq_offset: int = 0  # the kernel's cumulative length change of this direction

    def feed(self, data: bytes, now: float) -> None:
        if self.error is not None:
            return
        self.buf += data
        framed = False
        while (end := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[: end + 1])
            if self._violation(line):
                break
            self.held.append(line)
            del self.buf[: end + 1]
            framed = True
        if self.error is None:
            self._violation(bytes(self.buf))
        if not self.buf:
            self.partial_since = None
        elif framed or self.partial_since is None:
            self.partial_since = now  # the rest started in this chunk

    def _violation(self, text: bytes) -> bool:
        if b"\0" in text:
            self.error = "NUL byte in command line"
        elif len(text) > self.max_line:
            self.error = f"line longer than {self.max_line} bytes"
        return self.error is not None

    @property
    def backlog(self) -> int:
        return sum(map(len, self.held)) + len(self.buf)


@dataclass
class _Want:
    """An observation the model expects: its type and the fields it knows."""

    cls: type[Observation]
    fields: dict[str, Any]

    def matches(self, obs: Observation) -> bool:
        return type(obs) is self.cls and all(getattr(obs, k) == v for k, v in self.fields.items())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.cls.__name__}({args})"


def want(obs: Observation) -> _Want:
    """Expect exactly `obs`, every field."""
    names = [f.name for f in dataclass_fields(obs)]  # type: ignore[arg-type]
    return _Want(type(obs), {name: getattr(obs, name) for name in names})


class Checker:
    """Feed `step(event, now, actions)` for every event of one session, from its start."""

    def __init__(self, faces: Faces, policy: CorePolicy, now: float = 0.0) -> None:
        self.faces = faces
        self.policy = policy
        self.sides = {
            side: _SideModel(side, ep.host.version == 6, policy.max_line)
            for side, ep in ((CLIENT, faces.client), (SERVER, faces.server))
        }
        self.closed = False
        self.expectation: _Expectation | None = None
        self.listeners: set[int] = set()  # every listener id asked for
        self.running: dict[int, DataMode] = {}  # accepted, not finished
        self.dialing: dict[int, Side] = {}  # conn -> the side whose lines wait for the dial
        self.last_activity = now
        self.auth: bytes | None = None  # the AUTH line forwarded (tls passthrough)
        self.opaque = False  # after the server's 234: bytes pass through unread
        self.terminate = TerminateModel(policy.require_tls) if policy.tls == "terminate" else None
        self.replies = RepliesModel()
        self.seen: Counter[str] = Counter()  # what happened, for generator coverage
        self.steps = 0
        # raw-action state (independent of the model)
        self._raw_shut: set[Side] = set()
        self._raw_closed = False
        # per step
        self._acts: list[Action] = []
        self._pos = 0
        self._event: Event | None = None
        self._now = now
        self._obs: list[_Want] = []

    # ---- driving ------------------------------------------------------------------------

    def step(self, event: Event, now: float, actions: list[Action]) -> None:
        self.steps += 1
        self._event, self._now, self._acts, self._pos, self._obs = event, now, actions, 0, []
        self._raw_checks(event, actions)
        self.seen[type(event).__name__] += 1
        match event:
            case DataReceived(side, data):
                self._on_data(side, data)
            case ListenerOpened(listener, port):
                self._on_bound(listener, port)
            case ListenerFailed(listener, error):
                self._on_bind_failed(listener, error)
            case DataAccepted():
                self._on_accept(event)
            case DataConnected(conn):
                self._release(conn)
            case DataFinished():
                self._on_finished(event)
            case TimerFired():
                self._on_timer()
            case CloseRequested(reason, reply):
                if reply and not self.closed:
                    self._send(CLIENT, reply, "REPLY", "the reply of CloseRequested")
                self._close(reason)
        extra = self._next()
        if extra is not None:
            invariant = "TIMER" if isinstance(event, TimerFired) else "EXTRA"
            if isinstance(extra, Send):
                invariant = self._classify(extra.data, extra.side, invariant)
            self._fail(invariant, f"an action the model does not expect: {extra!r}")
        self._check_observations()

    def check_state(self, backlog: dict[Side, int], deadline: float | None) -> None:
        """Compare the session's `backlog()` and `next_deadline()` with the model."""
        for side, m in self.sides.items():
            if backlog[side] != m.backlog:
                self._fail("BACKLOG", f"{side.value}: session {backlog[side]}, model {m.backlog}")
        if deadline != self.next_deadline():
            self._fail("TIMER", f"next_deadline {deadline}, model {self.next_deadline()}")

    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        due = [self.expectation.deadline] if self.expectation else []
        if (held := self.replies.deadline()) is not None:
            due.append(held)
        if not self.running:
            due.append(self.last_activity + self.policy.idle_timeout)
        due += [start + self.policy.line_timeout for start in self._line_starts()]
        return min(due) if due else None

    def finish(self) -> None:
        """End of a run: every line that nothing holds was handled (LOSS)."""
        for side, m in self.sides.items():
            if m.held and not self.closed and not self._blocked(side):
                self._fail("LOSS", f"{side.value} lines never handled: {list(m.held)!r}")

    # ---- raw checks (no model) ----------------------------------------------------------

    def _raw_checks(self, event: Event, actions: list[Action]) -> None:
        for i, action in enumerate(actions):
            if isinstance(action, Send):
                if action.side in self._raw_shut:
                    self._fail("SHUT", f"{action!r} after ShutdownWrite({action.side})", i)
                own_reply = isinstance(event, CloseRequested) and action.data == event.reply
                if b"\0" in action.data and not own_reply and self.auth is None:
                    self._fail("NUL", f"{action!r} carries a NUL byte", i)
            if self._raw_closed and not self._late_ok(event, action):
                self._fail("CLOSED", f"{action!r} after CloseSession", i)
            if isinstance(action, ShutdownWrite):
                self._raw_shut.add(action.side)
            if isinstance(action, CloseSession):
                if self._raw_closed:
                    self._fail("CLOSED", "a second CloseSession", i)
                self._raw_closed = True

    @staticmethod
    def _late_ok(event: Event, action: Action) -> bool:
        if isinstance(action, DataEnded):
            return True
        if isinstance(event, ListenerOpened) and action == CloseListener(event.listener):
            return True
        if isinstance(event, DataAccepted):
            return action == RejectData(event.conn) or (
                isinstance(action, DataRejected) and action.reason is Refusal.STALE
            )
        return False

    # ---- the action cursor --------------------------------------------------------------

    def _next(self) -> Action | None:
        """The next action that is not an observation (observations are matched per step)."""
        while self._pos < len(self._acts):
            action = self._acts[self._pos]
            self._pos += 1
            if not isinstance(action, Observation):
                return action
        return None

    def _peek(self) -> Action | None:
        pos = self._pos
        try:
            return self._next()
        finally:
            self._pos = pos

    def _expect(self, action: Action, invariant: str, what: str) -> None:
        got = self._next()
        if got != action:
            self._fail(invariant, f"expected {what} {action!r}, got {got!r}")

    def _observe(self, obs: Observation | _Want) -> None:
        self._obs.append(obs if isinstance(obs, _Want) else want(obs))

    def _send(
        self, side: Side, data: bytes, invariant: str, what: str, origin: _SideModel | None = None
    ) -> None:
        """Expect Send(side, data) next: a line of `origin` forwarded, or (no origin) a reply
        of ftpalg's own."""
        if self.sides[side].shut:  # dropped on purpose: the side's write half is shut
            return
        got = self._next()
        if got == Send(side, data):
            return
        if got is None:
            invariant = "LOSS" if origin is not None else invariant
            self._fail(invariant, f"{what} {Send(side, data)!r} missing; the step ended")
        if isinstance(got, Send) and got.side is side:
            invariant = self._classify(got.data, side, invariant)
        self._fail(invariant, f"expected {what} {Send(side, data)!r}, got {got!r}")

    def _classify(self, sent: bytes, to: Side, invariant: str) -> str:
        """Name what a wrong Send to `to` did, if it is a line from the other side."""
        origin = self.sides[to.other]
        if sent in origin.handled:
            return "DUPLICATION"
        if sent in origin.held or (origin.opening is not None and sent == origin.opening.line):
            return "ORDER"
        return invariant

    def _fail(self, invariant: str, detail: str, index: int | None = None) -> NoReturn:
        pos = self._pos - 1 if index is None else index
        listing = "\n".join(f"  {'>' if i == pos else ' '} {a!r}" for i, a in enumerate(self._acts))
        raise InvariantViolation(
            f"{invariant}: {detail}\n  step {self.steps}: {self._event!r} at {self._now}\n"
            f"  actions:\n{listing}"
        )

    def _check_observations(self) -> None:
        seen = [a for a in self._acts if isinstance(a, Observation)]
        missing = list(self._obs)
        extra: list[Observation] = []
        for obs in seen:
            found = next((w for w in missing if w.matches(obs)), None)
            if found is None:
                extra.append(obs)
            else:
                missing.remove(found)
        if missing or extra:
            self._fail("OBSERVATION", f"missing {missing!r}, unexpected {extra!r}")
        self.seen.update(type(obs).__name__ for obs in seen)

    # ---- control lines ------------------------------------------------------------------

    def _blocked(self, side: Side) -> bool:
        return self.sides[side].opening is not None or side in self.dialing.values()

    def _line_starts(self) -> list[float]:
        """When the unterminated lines started."""
        return [m.partial_since for m in self.sides.values() if m.partial_since is not None]

    def _on_data(self, side: Side, data: bytes) -> None:
        m = self.sides[side]
        if self.closed or m.eof_seen:
            return  # ignored: nothing may happen
        self.last_activity = self._now
        if data and self.opaque:  # TLS: the bytes as they came, at once
            self.seen["opaque_bytes"] += 1
            self._send(side.other, data, "LOSS", "the TLS bytes passed through", m)
            return
        if data:
            m.feed(data, self._now)
        else:
            m.eof_seen = True
            m.partial_since = None  # EOF ends the last line: it is complete
        self._drain(side)

    def _drain(self, side: Side) -> None:
        m = self.sides[side]
        while m.held and not self._blocked(side) and not self.closed:
            line = m.held.popleft()
            m.handled.append(line)
            self._line(m, line)
        if m.held or self._blocked(side) or self.closed:
            return
        if m.error is not None and not self.opaque:
            self.seen["framing_error"] += 1
            self._send(CLIENT, P.framing_error(m.error), "REPLY", "the framing error reply")
            self._observe(ProtocolViolation(side, m.error))
            self._close(f"{side.value}: {m.error}")
        elif m.eof_seen and not m.eof_done:
            m.eof_done = True
            rest, m.buf = bytes(m.buf), bytearray()
            if rest and parse(side, rest, m.v6) is not None:
                self._observe(UnterminatedAddressLineDropped(side, rest))
            elif rest:
                m.handled.append(rest)
                self._send(side.other, rest, "LOSS", "the unterminated last line", m)
            self.seen["eof_passed"] += 1
            self._expect(ShutdownWrite(side.other), "SEQUENCE", "the EOF passed on")
            self.sides[side.other].shut = True
            if all(s.eof_done for s in self.sides.values()):
                self._close("closed by both peers")

    def _line(self, m: _SideModel, line: bytes) -> None:
        if m.side is SERVER:
            for found in self.replies.server_line(line):
                self.seen["reply_released" if isinstance(found, dict) else "login_failed"] += 1
                self._observe(found if isinstance(found, LoginFailed) else _Want(DataEnded, found))
        parsed = parse(m.side, line, m.v6)
        if parsed is None and self.terminate is not None:  # tls = terminate: terminate_model
            if m.side is SERVER:
                self._send(CLIENT, self.terminate.server(line), "LOSS", "the server line", m)
                return
            if (answer := self.terminate.client(line)) is not None:
                self._terminate_answer(m, answer)
                return
        if parsed is None and m.side is CLIENT and is_auth(line):
            if self.policy.tls == "refuse":
                self.seen["tls_refused"] += 1
                self._send(CLIENT, REFUSED, "REPLY", "the 534 for AUTH")
                self._observe(TlsRefused(line))
                return
            self.auth = line
        if parsed is None:
            if m.side is CLIENT:
                self.replies.client_line(line)
            self._send(m.side.other, line, "LOSS", "the forwarded line", m)
            if m.side is SERVER and self.auth is not None and line[:4] == b"234 ":
                self._go_opaque()
        elif isinstance(parsed, Malformed):
            self.seen["malformed"] += 1
            if m.side is CLIENT:
                reply = P.malformed_reply(parsed.kind, parsed.reason)
                self._send(CLIENT, reply, "REPLY", "the 501 for a malformed command")
                self._observe(MalformedCommandRefused(parsed.kind, parsed.reason, line))
            else:
                self._send(CLIENT, line, "LOSS", "the malformed reply, unchanged", m)
                self._observe(MalformedReplyForwarded(parsed.kind, parsed.reason, line))
        else:
            self._address_line(m, line, parsed)

    def _terminate_answer(self, m: _SideModel, answer: Answer) -> None:
        self.seen["tls_terminate_answer"] += 1
        self._send(CLIENT, answer.reply, "REPLY", "ftpalg's own answer (tls = terminate)")
        for then in answer.then:
            if isinstance(then, Observation):
                self._observe(then)
            else:
                self._expect(then, "SEQUENCE", "what follows the answer (tls = terminate)")
        if answer.secured_now:  # the client's plaintext behind AUTH: dropped unread
            m.handled += list(m.held)
            m.held.clear()
            m.buf = bytearray()
            m.partial_since = None

    def _go_opaque(self) -> None:
        """After the 234 answering AUTH: what each side holds is passed on raw, in order,
        then the window for the data ftpalg can no longer see."""
        assert self.auth is not None
        self.opaque = True
        self.seen["tls_passthrough"] += 1
        self._observe(TlsPassthrough(self.auth))
        f = self.faces
        window = OpenWindow(f.client.host, f.server_face.host, f.client_face.host)
        self._expect(window, "DATA", "the TLS data window")
        for side, m in self.sides.items():
            rest = b"".join(m.held) + bytes(m.buf)
            m.handled += list(m.held)
            m.held.clear()
            m.buf = bytearray()
            m.partial_since = None
            if rest:
                self._send(side.other, rest, "LOSS", "the bytes behind the 234, raw", m)

    def _address_line(self, m: _SideModel, line: bytes, match: Match) -> None:
        f, pol = self.faces, self.policy
        if m.side is CLIENT:
            assert match.address is not None
            bounce = match.address != f.client.host and not pol.loose
            low = match.port < 1024 and not pol.allow_low_data_ports
            refusal = P.refusal_for_client(match, f.client.host, pol)
            if (refusal is not None) != (bounce or low):
                raise InvariantViolation(f"model and policy disagree on refusing {line!r}")
            if refusal is not None:
                self.seen["refused"] += 1
                self._send(CLIENT, refusal, "REPLY", "the refusal")
                why = Refusal.BOUNCE if bounce else Refusal.LOW_PORT
                self._observe(CommandRefused(why, line, refusal))
                return
            face, accept_from, dial_from = f.client_face.host, f.server.host, f.server_face.host
            target = Endpoint(match.address, match.port)
        else:
            host = match.address if (pol.loose and match.address) else f.server.host
            if match.address is not None and match.address != f.server.host:
                self._observe(ReplyAddressMismatch(line, str(host)))
            face, accept_from, dial_from = f.server_face.host, f.client.host, f.client_face.host
            target = Endpoint(host, match.port)
        shown = face
        if m.side is SERVER:
            shown = next((a for a in pol.announce if a.version == face.version), face)
        if isinstance(shown, IPv6Address) and match.kind in (Kind.PORT, Kind.PASV):
            self.seen["unrepresentable"] += 1
            try:
                replacement(match.kind, shown, match.port)
                raise InvariantViolation(f"{shown} written into a {match.kind.value} line")
            except Unrepresentable as exc:
                self._observe(RewriteImpossible(line, str(exc)))
            if m.side is CLIENT:
                self._send(CLIENT, P.UNREPRESENTABLE, "REPLY", "the unrepresentable reply")
            else:
                self._send(CLIENT, line, "LOSS", "the unrewritable reply, unchanged", m)
            return
        got = self._next()
        low, high = pol.data_ports
        if not pol.strict_data_ports or low <= match.port <= high:
            first_ok = isinstance(got, OpenListener) and got.port == match.port
        else:
            first_ok = isinstance(got, OpenListener) and low <= got.port <= high
        if not (
            isinstance(got, OpenListener)
            and first_ok
            and got.listener not in self.listeners
            and got.host == face
            and (got.peer, got.target, got.source) == (accept_from, target, dial_from)
        ):
            self._fail("DATA", f"expected a new OpenListener(_, {face}, {match.port}), got {got!r}")
        self.listeners.add(got.listener)
        m.opening = _Opening(
            got.listener, line, match, face, shown, accept_from, target, dial_from, {got.port}
        )

    # ---- listeners ----------------------------------------------------------------------

    def _opening(self, listener: int) -> _SideModel | None:
        for m in self.sides.values():
            if m.opening is not None and m.opening.listener == listener:
                return m
        return None

    def _on_bound(self, listener: int, port: int) -> None:
        m = self._opening(listener)
        if m is None or self.closed:
            self._expect(CloseListener(listener), "DATA", "a late listener closed")
            return
        op = m.opening
        assert op is not None
        m.opening = None
        expected = splice(op.line, op.match, replacement(op.match.kind, op.shown, port))
        old = self.expectation
        if old is not None:
            self.seen["replaced"] += 1
            self._expect(CloseListener(old.listener), "DATA", "the replaced listener closed")
            self._observe(ExpectationEnded(ExpectationOutcome.REPLACED, old.listen))
        listen = Endpoint(op.face, port)
        self.replies.announced()
        deadline = self._now + self.policy.expect_timeout
        self.expectation = _Expectation(
            listener, op.match.kind, listen, op.accept_from, op.target, op.dial_from, deadline
        )
        got = self._next()
        if got != Send(m.side.other, expected):
            self._rewrite_failure(m, op, port, expected, got)
        delta = len(expected) - len(op.line)
        m.seq_offset += delta
        kind, target = op.match.kind, op.target
        rewritten = Rewritten(kind, op.line, expected, listen, target, delta, m.seq_offset)
        self._observe(rewritten)
        self.seen["rewritten"] += 1
        self._drain(m.side)

    def _rewrite_failure(
        self, m: _SideModel, op: _Opening, port: int, expected: bytes, got: Action | None
    ) -> None:
        want_send = Send(m.side.other, expected)
        if not (isinstance(got, Send) and got.side is m.side.other):
            self._fail("LOSS", f"expected the rewritten line {want_send!r}, got {got!r}")
        if got.data == op.line:
            self._fail("REWRITE", f"forwarded unchanged, expected {want_send!r}")
        head, tail = op.line[: op.match.start], op.line[op.match.end :]
        if not (got.data.startswith(head) and got.data.endswith(tail)):
            self._fail("REWRITE", f"bytes outside the span changed: {got.data!r} for {op.line!r}")
        again = parse(m.side, got.data, op.face.version == 6)
        if not isinstance(again, Match) or again.port != port:
            self._fail("REWRITE", f"{got.data!r} does not announce port {port}")
        if op.match.kind is not Kind.EPSV and again.address != op.shown:
            self._fail("REWRITE", f"{got.data!r} does not announce {op.shown}")
        kind = self._classify(got.data, m.side.other, "REWRITE")
        self._fail(kind, f"expected the rewritten line {want_send!r}, got {got!r}")

    def _on_bind_failed(self, listener: int, error: str) -> None:
        m = self._opening(listener)
        if m is None or self.closed:
            return
        op = m.opening
        assert op is not None
        low, high = self.policy.data_ports
        retry = self._peek()
        if isinstance(retry, OpenListener) and retry.listener == listener:
            got = self._next()
            assert isinstance(got, OpenListener)
            ok = (
                got.listener == listener
                and got.host == op.face
                and (got.peer, got.target, got.source) == (op.accept_from, op.target, op.dial_from)
                and low <= got.port <= high
                and got.port not in op.tried
                and op.retries < self.policy.port_tries
            )
            if not ok:
                self._fail("DATA", f"bad retry {got!r} (tried {sorted(op.tried)})")
            op.tried.add(got.port)
            op.retries += 1
            self.seen["retry"] += 1
            return
        self.seen["no_data_port"] += 1
        m.opening = None
        reply = P.NO_PORT_FOR_ACTIVE if m.side is CLIENT else P.NO_PORT_FOR_PASSIVE
        self._send(CLIENT, reply, "REPLY", "the no-data-port reply")
        self._observe(NoDataPort(op.line, error))
        self._drain(m.side)

    # ---- data connections ---------------------------------------------------------------

    def _on_accept(self, ev: DataAccepted) -> None:
        exp = self.expectation
        if self.closed or exp is None or exp.listener != ev.listener:
            self.seen["stale"] += 1
            self._expect(RejectData(ev.conn), "DATA", "a stale connection rejected")
            self._observe(DataRejected(Refusal.STALE, ev.peer))
            return
        if ev.peer.host != exp.accept_from:
            self.seen["theft"] += 1
            self._expect(RejectData(ev.conn), "DATA", "a theft rejected")
            self._observe(
                DataRejected(Refusal.THEFT, ev.peer, str(exp.accept_from), str(exp.listen))
            )
            return
        self.seen["used"] += 1
        mode = DataMode.ACTIVE if exp.kind.from_client else DataMode.PASSIVE
        source = Endpoint(exp.dial_from, ev.peer.port if mode is DataMode.ACTIVE else 0)
        self.expectation = None
        self._expect(CloseListener(exp.listener), "DATA", "the used listener closed")
        self._observe(ExpectationEnded(ExpectationOutcome.USED, exp.listen))
        self._expect(ConnectData(ev.conn, exp.target, source), "DATA", "the dial")
        self._observe(DataStarted(ev.conn, ev.peer, exp.target, mode))
        self.running[ev.conn] = mode
        self.replies.accepted(ev.conn)
        self.dialing[ev.conn] = SERVER if mode is DataMode.ACTIVE else CLIENT

    def _release(self, conn: int) -> None:
        side = self.dialing.pop(conn, None)
        if side is not None:
            self._drain(side)

    def _on_finished(self, ev: DataFinished) -> None:
        self._release(ev.conn)
        mode = self.running.pop(ev.conn, None)
        if mode is None:
            return
        self.last_activity = self._now
        to_client, to_server = ev.accepted_to_dialed, ev.dialed_to_accepted
        if mode is DataMode.PASSIVE:
            to_client, to_server = to_server, to_client
        known = {
            "conn": ev.conn,
            "mode": mode,
            "bytes_to_client": to_client,
            "bytes_to_server": to_server,
            "seconds": round(ev.seconds, 6),
            "result": ev.error or "ok",
            "client": self.faces.client,
        }
        now = self.replies.finished(ev.conn, known, self._now)
        if now is None:
            self.seen["reply_awaited"] += 1
        else:
            self._observe(_Want(DataEnded, now))

    # ---- time and closing ---------------------------------------------------------------

    def _on_timer(self) -> None:
        if self.closed:
            return
        now, exp = self._now, self.expectation
        for known in self.replies.due(now):
            self.seen["reply_timeout"] += 1
            self._observe(_Want(DataEnded, known))
        if exp is not None and now >= exp.deadline:
            self.seen["expired"] += 1
            self.expectation = None
            self._expect(CloseListener(exp.listener), "TIMER", "the expired listener closed")
            self._observe(ExpectationEnded(ExpectationOutcome.EXPIRED, exp.listen))
        starts = self._line_starts()
        if starts and now >= min(starts) + self.policy.line_timeout:
            self.seen["line_timeout"] += 1
            self._send(CLIENT, P.LINE_TIMEOUT, "TIMER", "the line timeout reply")
            self._close("line timeout")
        elif not self.running and now >= self.last_activity + self.policy.idle_timeout:
            self.seen["idle_timeout"] += 1
            self._send(CLIENT, P.IDLE_TIMEOUT, "TIMER", "the idle timeout reply")
            self._close("idle timeout")

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for known in self.replies.close():
            self._observe(_Want(DataEnded, known))
        for m in self.sides.values():
            if m.opening is not None:
                self._expect(CloseListener(m.opening.listener), "CLOSED", "a pending listener")
                m.opening = None
        if self.expectation is not None:
            exp, self.expectation = self.expectation, None
            self._expect(CloseListener(exp.listener), "CLOSED", "the armed listener closed")
            self._observe(ExpectationEnded(ExpectationOutcome.DROPPED, exp.listen))
        self._observe(SessionClosed(reason))
        self._expect(CloseSession(reason), "CLOSED", "the end of the session")


def check_trace(
    faces: Faces, policy: CorePolicy, trace: list[tuple[Event, float, list[Action]]]
) -> Checker:
    """Check a recorded trace (event, now, actions) of one session from its start."""
    checker = Checker(faces, policy)
    for event, now, actions in trace:
        checker.step(event, now, actions)
    checker.finish()
    return checker
