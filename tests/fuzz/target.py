"""The fuzz target for the core: bytes in, a checked session run out.

The input is read as a small program for tests/core/driver.py. The first byte is the setup
(faces: IPv4, IPv6, 4-to-6 or 6-to-4; strict or loose; low data ports allowed; a 64-byte
line limit; listeners bound at once; 1-4 port tries). Then each byte is an operation (low
nibble) with an argument (high nibble): bytes from the client or the server (the argument
gives the length of the chunk that follows), an EOF, a listener bound or failing, a data
connection from the expected peer, the other peer or a stranger, a dial connected or
finished, time passing with or without the timer, a CloseRequested. Every step is checked
by the shared invariant checker (tests/core/invariants.py): order, loss, duplication, the
exact rewrite, ftpalg's own replies, nothing after ShutdownWrite or CloseSession, timers.
"""

from __future__ import annotations

from tests.core.driver import (
    Accept,
    Bind,
    Close,
    Connected,
    Fail,
    Feed,
    Finish,
    Op,
    Run,
    Setup,
    Tick,
    Wait,
    run,
)
from tests.core.harness import CLIENT, SERVER

# seconds: around the run's timeouts (line 20, expectation 30, idle 100)
DELTAS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 19.5, 20.0, 25.0, 30.0, 45.0, 60.0, 100.0, 150.0)


def decode(data: bytes) -> tuple[Setup, list[Op]]:
    head = data[0] if data else 0
    setup = Setup(
        faces=head & 3,
        loose=bool(head & 4),
        allow_low_data_ports=bool(head & 8),
        max_line=64 if head & 16 else 4096,
        auto_bind=bool(head & 32),
        port_tries=1 + (head >> 6),
    )
    ops: list[Op] = []
    pos = 1
    while pos < len(data):
        code, arg = data[pos] & 15, data[pos] >> 4
        pos += 1
        if code <= 5:  # bytes: 0-2 from the client, 3-5 from the server
            size = 1 + arg * 4
            ops.append(Feed(CLIENT if code <= 2 else SERVER, data[pos : pos + size]))
            pos += size
        elif code == 6:
            ops.append(Feed(CLIENT if arg & 1 else SERVER, b""))
        elif code in (7, 8):
            ops.append(Bind(arg, None if arg < 12 else 40000 + arg))
        elif code == 9:
            ops.append(Fail(arg))
        elif code == 10:
            ops.append(Accept(arg >> 2 & 1, arg % 3, 20 if arg & 8 else 40000 + arg))
        elif code == 11:
            ops.append(Connected(arg))
        elif code == 12:
            ops.append(Finish(arg, arg * 1000, arg, error=arg >= 12))
        elif code == 13:
            ops.append(Tick(DELTAS[arg % len(DELTAS)], to_deadline=arg == 15))
        elif code == 14:
            ops.append(Wait(DELTAS[arg % len(DELTAS)]))
        elif arg < 2:
            ops.append(Close(reply=bool(arg)))
    return setup, ops


def run_session(data: bytes) -> Run:
    setup, ops = decode(data)
    return run(setup, ops)
