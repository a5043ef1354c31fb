"""The fuzz target for the core: one invariant, checked on every input.

An input is split into chunks, each sent by the client or the server side (the first byte
of each chunk chooses), every listener the core asks for is "bound" on the port it asked
for, and the session ends with EOF from both sides. Whatever the bytes, the session must
not raise, must never forward a NUL, must send nothing to a side after passing it an EOF,
and every line it forwards must be an input line,
a prefix of one (the unterminated rest at EOF), ftpalg's own reply to the client, or an
input line changed only inside the span its parser reported.
"""

from __future__ import annotations

import random

from ftpalg.core.messages import Action, ListenerOpened, OpenListener, Send, ShutdownWrite, Side
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Session
from ftpalg.core.wire import Match, parse_client_line, parse_server_line
from tests.core.harness import FACES_V4, FACES_V6

OWN_REPLIES = (b"421 ", b"425 ", b"500 ", b"501 ")


def run_session(data: bytes) -> None:
    faces = FACES_V6 if data[:1] == b"6" else FACES_V4
    session = Session(faces, CorePolicy(), 0.0, random.Random(0))
    streams: dict[Side, bytearray] = {Side.CLIENT: bytearray(), Side.SERVER: bytearray()}
    out: list[Action] = []
    pos, now = 1, 0.0
    while pos < len(data):
        head = data[pos]
        size = 1 + head % 64
        side = Side.CLIENT if head & 0x80 else Side.SERVER
        chunk = data[pos + 1 : pos + 1 + size]
        pos += 1 + size
        if not chunk:
            break
        streams[side] += chunk
        now += 0.5
        acts = session.receive(side, chunk, now)
        while True:
            out.extend(acts)
            opens = [a for a in acts if isinstance(a, OpenListener)]
            if not opens:
                break
            acts = session.handle(ListenerOpened(opens[-1].listener, opens[-1].port), now)
    for side in Side:
        out.extend(session.receive(side, b"", now))
    check(streams, out, faces is FACES_V6)


def lf_lines(stream: bytes) -> list[bytes]:
    parts = stream.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def check(streams: dict[Side, bytearray], out: list[Action], v6: bool = False) -> None:
    shut: set[Side] = set()
    for action in out:  # nothing is ever sent to a side after its write half was shut
        if isinstance(action, ShutdownWrite):
            shut.add(action.side)
        assert not (isinstance(action, Send) and action.side in shut), action
    for side in Side:
        lines = lf_lines(bytes(streams[side]))
        parse = parse_client_line if side is Side.CLIENT else parse_server_line
        for action in out:
            if not isinstance(action, Send) or action.side is not side.other:
                continue
            sent = action.data
            assert b"\0" not in sent
            if sent in lines or any(line.startswith(sent) for line in lines):
                continue
            if side is Side.SERVER and sent.startswith(OWN_REPLIES):
                continue
            assert any(same_outside_span(line, sent, parse(line, v6)) for line in lines), sent


def same_outside_span(line: bytes, sent: bytes, parsed: object) -> bool:
    if not isinstance(parsed, Match):
        return False
    return sent.startswith(line[: parsed.start]) and sent.endswith(line[parsed.end :])
