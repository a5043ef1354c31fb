"""The line dispatch of a control session (core/session.py tells the whole story).

How this works. Each framed line goes to exactly one handler: the data-mode conversion
(convert.py) when configured, else the RFC 6384 translation for an IPv6 client with an IPv4
server (nat64.py), else the plain path. The plain path forwards ordinary lines (AUTH and
friends go through tls.py first) and hands PORT/EPRT/227/229 to announce.py. Under
`--log-level debug` every line is also traced (trace.py). `Lines` is a mixin of `Session`:
the state it uses is the session's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftpalg.core import policy as P
from ftpalg.core.convert import Converter
from ftpalg.core.direction import Direction
from ftpalg.core.expect import Expectation
from ftpalg.core.messages import Action, Faces, Send, Side
from ftpalg.core.nat64 import Nat64, strip_telnet
from ftpalg.core.observations import MalformedCommandRefused, MalformedReplyForwarded
from ftpalg.core.tls import TlsControl
from ftpalg.core.trace import traced_line
from ftpalg.core.transfer import CommandNotes
from ftpalg.core.wire import Malformed, Match, parse_client_line, parse_server_line

CLIENT, SERVER = Side.CLIENT, Side.SERVER


class Lines:
    sides: dict[Side, Direction]
    conv: Converter | None
    nat: Nat64 | None
    tls: TlsControl
    notes: CommandNotes
    faces: Faces
    expectation: Expectation | None
    _last_activity: float

    if TYPE_CHECKING:  # the session's own (session.py, announce.py)

        def _drain(self, side: Side, now: float, out: list[Action]) -> None: ...

        def _address_line(
            self, side: Side, offset: int, line: bytes, match: Match, out: list[Action]
        ) -> None: ...

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

    def _traced(self, side: Side, offset: int, line: bytes, out: list[Action]) -> None:
        """`_line` under --log-level debug: with its `command`/`reply` event (trace.py)."""
        direction = self.sides[side]
        traced_line(
            side,
            line,
            out,
            lambda: self._line(side, offset, line, out),
            lambda: direction.opening is not None and direction.opening.line is line,
        )

    def _plain_line(self, side: Side, offset: int, line: bytes, out: list[Action]) -> None:
        if side is SERVER and self.notes.waiting:  # a reply of interest is due: transfer.py
            self.notes.server_line(line, out)
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
