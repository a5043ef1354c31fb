"""Generated translated sessions (core/nat64.py) against a scripted IPv4-only server.

An IPv6 client pipelines random commands (EPSV with and without arguments, EPRT |2|, PASV,
ALGS, LPSV/LPRT, NOOP, Telnet negotiation) in random chunks; the scripted server answers
every line it gets as an IPv4 server would, with or without EPSV/EPRT support. Whatever the
order and chunking:
- the client gets exactly one final reply per command, in order, and of the right kind
  (an EPSV always a 229 while the translation is on, whatever the server supports);
- the server never sees what an IPv4 server cannot answer (EPSV 2, EPRT |2|, LPSV, LPRT,
  ALGS) while the translation is on, nor EPSV/EPRT again once it refused one;
- every 229 the client gets names a listener ftpalg bound on the client's view of the server;
- nothing is left waiting at the end.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpalg.core.convert_steps import final
from ftpalg.core.messages import (
    Action,
    DataReceived,
    Event,
    ListenerOpened,
    OpenListener,
    Send,
)
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Session
from tests.core.harness import CLIENT, FACES_6TO4, SERVER

COMMANDS = (
    b"EPSV",
    b"EPSV 2",
    b"EPSV 1",
    b"EPSV ALL",
    b"EPRT |2|2001:db8::1|41000|",
    b"PASV",
    b"NOOP",
    b"ALGS STATUS64",
    b"ALGS DISABLE64",
    b"ALGS ENABLE64",
    b"LPSV",
    b"LPRT 6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,1,2,160,40",
    b"\xff\xfb\x18NOOP",
)
NEVER_WHEN_ON = (b"EPSV 2", b"EPSV 1", b"EPRT |2|", b"LPSV", b"LPRT", b"ALGS")


class Ipv4Server:
    """Answers each line as an IPv4-only FTP server would."""

    def __init__(self, epsv: bool, eprt: bool, multiline: bool) -> None:
        self.epsv, self.eprt, self.multiline = epsv, eprt, multiline
        self.got: list[bytes] = []
        self.port = 50000

    def answer(self, line: bytes) -> bytes:
        self.got.append(line)
        cmd = line.rstrip(b"\r\n")
        word = cmd.split(b" ", 1)[0].upper()
        refuse = b"500-not understood\r\n500 command\r\n" if self.multiline else b"500 no\r\n"
        if cmd == b"EPSV":
            return b"229 Entering Extended Passive Mode (|||50000|).\r\n" if self.epsv else refuse
        if word == b"EPSV":
            return b"200 EPSV ALL ok.\r\n" if cmd == b"EPSV ALL" and self.epsv else b"522 no\r\n"
        if word == b"EPRT":
            return b"200 EPRT ok.\r\n" if self.eprt and b"|1|" in cmd else refuse
        if word in (b"PORT", b"NOOP"):
            return b"200 ok.\r\n"
        if word == b"PASV":
            return b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"
        return b"500 unknown.\r\n"


def expected_kind(command: bytes, on: bool) -> bytes | None:
    """The reply code the client must get for `command` (None: whatever the server said)."""
    if command.startswith(b"ALGS"):
        return b"216"
    if not on:
        return None
    if command in (b"EPSV", b"EPSV 2"):
        return b"229"
    return {b"EPSV 1": b"522", b"LPSV": b"502", b"LPRT": b"502"}.get(command.split(b" ")[0])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=12),
    st.lists(st.integers(1, 4), min_size=12, max_size=12),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_generated_translated_sessions(
    commands: list[bytes], chunks: list[int], epsv: bool, eprt: bool, multiline: bool
) -> None:
    session = Session(FACES_6TO4, CorePolicy(), 0.0, random.Random(3))
    server = Ipv4Server(epsv, eprt, multiline)
    replies: list[bytes] = []
    bound: set[int] = set()
    ports = iter(range(51000, 52000))
    sent_while_on: list[bool] = []  # per line the server got: was the translation on?

    def handle(event: Event) -> None:
        pending: list[Action] = list(session.handle(event, 1.0))
        while pending:
            action = pending.pop(0)
            if isinstance(action, Send) and action.side is CLIENT:
                replies.extend(line + b"\n" for line in action.data.split(b"\n") if line)
            elif isinstance(action, Send):
                assert session.nat is not None
                for line in action.data.splitlines(keepends=True):
                    if not line.startswith(b"\xff"):  # a refused Telnet option: no command
                        sent_while_on.append(session.nat.enabled)
                        pending += session.handle(DataReceived(SERVER, server.answer(line)), 1.0)
            elif isinstance(action, OpenListener):
                if action.host == FACES_6TO4.server_face.host:
                    port = next(ports)
                    bound.add(port)
                else:
                    port = next(ports)
                pending += session.handle(ListenerOpened(action.listener, port), 1.0)

    handle(DataReceived(SERVER, b"220 IPv4 only\r\n"))
    lines = [c + b"\r\n" for c in commands]
    i = 0
    for size in chunks:
        if i < len(lines):
            handle(DataReceived(CLIENT, b"".join(lines[i : i + size])))
            i += size
    if i < len(lines):
        handle(DataReceived(CLIENT, b"".join(lines[i:])))

    finals = [r for r in replies if final(r)]
    assert finals[0] == b"220 IPv4 only\r\n"
    assert len(finals) - 1 == len(commands), (commands, replies)
    on = True
    refused = {b"EPSV": False, b"EPRT": False}
    for command, reply in zip(commands, finals[1:], strict=True):
        cmd = command.removeprefix(b"\xff\xfb\x18")
        want = expected_kind(cmd, on)
        if want is not None:
            assert reply[:3] == want, (command, reply)
        if reply.startswith(b"229"):
            port = int(reply.split(b"|||")[1].split(b"|")[0])
            assert port in bound, reply
        if cmd == b"ALGS DISABLE64":
            on = False
        elif cmd == b"ALGS ENABLE64":
            on = True
    for line, sent_on in zip(server.got, sent_while_on, strict=True):
        cmd = line.rstrip(b"\r\n")
        if sent_on:
            assert not cmd.startswith(NEVER_WHEN_ON), server.got
            for verb, was_refused in refused.items():  # (EPSV ALL is passed on as it is)
                again = cmd.startswith(verb) and cmd != b"EPSV ALL"
                assert not (was_refused and again), server.got
        if sent_on and cmd == b"EPSV" and not epsv:  # learnt only while translating
            refused[b"EPSV"] = True
        if sent_on and cmd.startswith(b"EPRT |1|") and not eprt:
            refused[b"EPRT"] = True
    assert session.backlog(CLIENT) == 0 and session.backlog(SERVER) == 0
