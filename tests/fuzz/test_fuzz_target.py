"""The fuzz target runs in the normal suite too: seeds, then random programs (fixed seed)
that must reach every situation the checker knows (so the invariants are not checked on
trivial runs only)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ftpalg.core import session
from ftpalg.core.messages import Action, Side
from ftpalg.core.session import Session
from tests.core.driver import CLIENT_LINES, SERVER_LINES
from tests.core.harness import CLIENT, SERVER
from tests.core.invariants import InvariantViolation
from tests.fuzz.target import decode, run_session

SEEDS = [
    b"\x00\x55PORT 172,20,9,84,18,67\r\n\x07\x0a\x0b\x13227 (172,20,9,80,19,137)\r\n",
    b"\x01\x7aEPRT |2|2001:db8::1|4675|\r\n\x09\x09\x07\x33229 (|||6446|)\r\n\x2d",
    b"\x10\x30port 1,2,3\r\nPORT\x00\r\n\x23227 Logout.\r\n",
    b"\x02\x5aPORT 172,20,9,84,18,67\r\n\x53227 Entering Passive Mode (172,20,9,80,195,80)\r\n",
    b"\x20\x50USER a\r\nRETR x\r\nNO\xfd\xfd\xad\x1f",
]


@pytest.mark.parametrize("data", SEEDS)
def test_seeds(data: bytes) -> None:
    run_session(data)


def program(rng: random.Random) -> bytes:
    """A random program for the target: chunks cut anywhere from two plausible streams."""
    streams = {CLIENT: bytearray(), SERVER: bytearray()}
    vocab = {CLIENT: CLIENT_LINES, SERVER: SERVER_LINES}
    out = bytearray([rng.randrange(256)])
    for _ in range(rng.randrange(40)):
        if rng.random() < 0.5:
            side = rng.choice((CLIENT, SERVER))
            arg = rng.randrange(8)
            size = 1 + arg * 4
            while len(streams[side]) < size:
                streams[side] += rng.choice(vocab[side]) if rng.random() < 0.97 else b"\0"
            out += bytes([(0 if side is CLIENT else 3) | arg << 4]) + streams[side][:size]
            del streams[side][:size]
        else:
            out.append(rng.randrange(6, 16) | rng.randrange(16) << 4)
    return bytes(out)


def test_random_programs_reach_every_situation() -> None:
    rng = random.Random(20261206)
    seen: Counter[str] = Counter()
    for _ in range(3000):
        seen.update(run_session(program(rng)).checker.seen)
    situations = [
        *("rewritten", "retry", "no_data_port", "replaced", "expired", "used", "theft"),
        *("stale", "malformed", "refused", "unrepresentable", "framing_error", "eof_passed"),
        *("line_timeout", "idle_timeout", "UnterminatedAddressLineDropped", "DataEnded"),
        *("ReplyAddressMismatch", "ListenerFailed", "DataConnected", "DataFinished"),
        *("CloseRequested", "TimerFired", "LoginFailed"),
    ]
    assert [s for s in situations if not seen[s]] == []


def test_decode_reads_every_operation() -> None:
    setup, ops = decode(bytes([0xFF]) + bytes(range(6, 16)) + b"\x00A")
    knobs = (setup.faces, setup.loose, setup.max_line, setup.auto_bind, setup.port_tries)
    assert knobs == (3, True, 64, True, 4)
    names = " ".join(type(op).__name__ for op in ops)
    assert names == "Feed Bind Bind Fail Accept Connected Finish Tick Wait Close Feed"


def test_the_target_fails_on_a_broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core that forwards a line twice is caught by the target, not just by unit tests."""
    original = session.Session._line

    def twice(self: Session, side: Side, offset: int, line: bytes, out: list[Action]) -> None:
        original(self, side, offset, line, out)
        if line == b"NOOP\r\n":
            original(self, side, offset, line, out)

    monkeypatch.setattr(session.Session, "_line", twice)
    with pytest.raises(InvariantViolation, match=r"^DUPLICATION"):
        run_session(b"\x00\x20NOOP\r\nXYZ")  # 9 bytes from the client
