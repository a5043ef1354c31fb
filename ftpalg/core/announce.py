"""Announced data connections: an address line's listener, then its rewritten line
(core/session.py tells the whole story; expect.py the life of an expectation).

How this works. A PORT/EPRT (client) or 227/229 (server) that policy allows is held while
the adapter binds a listener on the receiver's face; later lines from the same side wait
behind it. Once bound, the line goes on with only its address/port span rewritten (or, for
NAT64, written anew: a 227 shown as a 229, an EPRT sent as PORT) and the expectation is
armed, replacing the older one. When no port can be bound the client gets the reply a
server would give. `Announcing` is a mixin of `Session`: the state it uses is the
session's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftpalg.core import policy as P
from ftpalg.core.convert import Converter
from ftpalg.core.direction import Direction
from ftpalg.core.expect import Expectation, PendingOpen
from ftpalg.core.ledger import SeqCorrection
from ftpalg.core.messages import (
    Action,
    CloseListener,
    Endpoint,
    Faces,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    Send,
    Side,
)
from ftpalg.core.nat64 import Nat64, rendered
from ftpalg.core.observations import (
    CommandRefused,
    ExpectationEnded,
    ExpectationOutcome,
    NoDataPort,
    ReplyAddressMismatch,
    RewriteImpossible,
    Rewritten,
)
from ftpalg.core.ports import PortChooser, RandomSource
from ftpalg.core.rewrite import Unrepresentable, replacement, splice
from ftpalg.core.trace import LineTraced, rewritten_line
from ftpalg.core.transfer import CommandNotes
from ftpalg.core.wire import Match

CLIENT, SERVER = Side.CLIENT, Side.SERVER


class Announcing:
    faces: Faces
    policy: P.CorePolicy
    rng: RandomSource
    sides: dict[Side, Direction]
    ledger: dict[Side, SeqCorrection]
    expectation: Expectation | None
    notes: CommandNotes
    conv: Converter | None
    nat: Nat64 | None
    trace: bool
    closed: bool
    _next_listener: int

    if TYPE_CHECKING:  # the session's own (session.py)

        def _drain(self, side: Side, now: float, out: list[Action]) -> None: ...

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
        if self.trace:
            out.append(rewritten_line(side, pending.line, new_line))
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
        if self.trace:
            out.append(LineTraced(pending.side, pending.line))
        self._drain_after_open(pending.side, now, out)

    def _drain_after_open(self, side: Side, now: float, out: list[Action]) -> None:
        self._drain(side, now, out)
        if self.nat is not None and side is SERVER:  # ftpalg's own answers waited for it
            self._drain(CLIENT, now, out)
