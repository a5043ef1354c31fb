"""The state of one direction of a control session (client→server or server→client).

How this works. Bytes from a side are framed into lines and queued in `held`; the session
takes them one at a time while the side is not blocked (a listener being opened for its
address line, `opening`, or a data dial it must wait for). `backlog` counts the queued bytes
so the adapter can stop reading a side that sends faster than its lines can be released
(back-pressure instead of unbounded memory). The EOF flags follow one rule: a side's EOF is
passed on only after its last queued line, and nothing is sent to a side after ftpalg passed
it an EOF (`shut`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ftpalg.core.expect import PendingOpen
from ftpalg.core.framer import LineFramer
from ftpalg.core.messages import Action, Send, ShutdownWrite, Side


@dataclass(slots=True)
class Direction:
    framer: LineFramer
    v6: bool  # the control connection on this side is IPv6
    held: deque[tuple[int, bytes]] = field(default_factory=deque)  # (offset, line)
    backlog: int = 0  # bytes in `held`
    opening: PendingOpen | None = None  # the address line waiting for its listener
    partial_since: float | None = None  # when an unterminated line started
    eof_seen: bool = False  # the side sent EOF
    eof_done: bool = False  # ... and it was passed on, after its last line
    shut: bool = False  # ftpalg passed an EOF *to* this side: send it nothing more

    def queue(self, data: bytes, now: float) -> None:
        lines = self.framer.feed(data)
        self.held.extend(lines)
        self.backlog += sum(len(line) for _, line in lines)
        if not self.framer.buffered:
            self.partial_since = None
        elif lines or self.partial_since is None:  # a line started in this chunk: it must
            self.partial_since = now  # end in time (an earlier one just ended)

    def take(self) -> tuple[int, bytes]:
        offset, line = self.held.popleft()
        self.backlog -= len(line)
        return offset, line


def drop_sends_after_shutdown(sides: dict[Side, Direction], out: list[Action]) -> list[Action]:
    """Mark the sides that were passed an EOF and drop later sends to them: a late reply of
    ftpalg's own (421 on shutdown or idle, 500 on a bad line) after the peer's EOF was passed
    on could not be read by the peer, and a transport must not write after its EOF."""
    kept: list[Action] = []
    for action in out:
        if isinstance(action, ShutdownWrite):
            sides[action.side].shut = True
        elif isinstance(action, Send) and sides[action.side].shut:
            continue
        kept.append(action)
    return kept
