"""The command/reply trace of `--log-level debug`: one event per control line.

How this works. The adapter decides once per session whether its log writes debug lines and
sets `Session.trace`; only then does the session call `traced_line()` around each line it
takes from a side (nothing is done per line otherwise). The event is `command` for a client
line and `reply` for a server line, with the line as received and, when ftpalg changed it on
the way, the line as sent (`sent`). Lines are traced when they leave: a PORT/EPRT/227/229
waits for its data listener, so it is traced when the rewritten line is sent
(`rewritten_line()`); one that never leaves (refused, malformed, no data port) is traced
when ftpalg answered it instead. Nothing is traced once the control channel is TLS passed
through (no lines any more); under `tls = terminate` the decrypted lines are. The argument
of PASS and ACCT is never logged: `masked()`, also for `sent`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftpalg.core.messages import Action, Send, Side
from ftpalg.core.observations import Observation

# RFC 959 §4.1.1: PASS <password>, ACCT <account-information>. Skip what a server would skip
# before the verb (spaces, Telnet IAC sequences, other non-ASCII bytes), match the verb with
# case folding, and hide everything after it. Over-redaction (e.g. "PASSX") is harmless.
SECRET = re.compile(rb"(?:\xff[\xfb-\xfe].|\xff.|[ \t\x80-\xff])*(?:PASS|ACCT)", re.I | re.S)


def masked(line: bytes) -> bytes:
    """`line`, with the argument of PASS/ACCT replaced by ``****`` (line end kept)."""
    match = SECRET.match(line)
    if match is None:
        return line
    return line[: match.end()] + b" ****" + line[len(line.rstrip(b"\r\n")) :]


@dataclass(frozen=True, slots=True)
class LineTraced(Observation):
    """One control line: `command` (client to server) or `reply` (server to client)."""

    LEVEL = "debug"
    side: Side  # where the line came from
    line: bytes  # as received
    sent: bytes | None = None  # as sent, when ftpalg changed it

    @property
    def event(self) -> str:
        return "command" if self.side is Side.CLIENT else "reply"

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": masked(self.line)}
        if self.sent is not None:
            out["sent"] = masked(self.sent)
        return out


def traced_line(
    side: Side,
    line: bytes,
    out: list[Action],
    handle: Callable[[], None],
    waits: Callable[[], bool],
) -> None:
    """Handle `line` (`handle()`), then trace it unless it `waits()` for its listener."""
    mark = len(out)
    handle()
    if waits():
        return  # traced when the rewritten line leaves
    sent = None
    for action in out[mark:]:  # the line as it left, when changed (a FEAT reply, terminate)
        if isinstance(action, Send) and action.side is side.other:
            if action.data != line and action.data[:3] == line[:3]:
                sent = action.data
            break
    out.insert(mark, LineTraced(side, line, sent))


def rewritten_line(side: Side, line: bytes, sent: bytes) -> LineTraced:
    """The trace of an address line that waited for its listener and now leaves."""
    return LineTraced(side, line, sent if sent != line else None)
