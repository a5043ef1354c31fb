"""The fuzz target runs in the normal suite too: seeds plus random inputs (fixed seed)."""

from __future__ import annotations

import random

import pytest

from ftpalg.core.messages import Send, Side
from tests.fuzz.target import check, run_session

SEEDS = [
    b"4\x85PORT 172,20,9,84,18,67\r\n\x05227 (172,20,9,80,19,137)\r\n",
    b"6\x9cEPRT |2|2001:db8::1|4675|\r\n\x10229 (|||6446|)\r\n",
    b"4\x90port 1,2,3\r\nPORT\x00\r\n\x0b227 Logout.\r\n",
]


@pytest.mark.parametrize("data", SEEDS)
def test_seeds(data: bytes) -> None:
    run_session(data)


def test_random_inputs() -> None:
    rng = random.Random(20261128)
    pieces = [b"PORT ", b"EPRT |1|", b"227 ", b"229 (|||", b"172,20,9,84,", b"18,67",
              b"\r\n", b"\n", b"|", b",", b"\x00", b"99999"]  # fmt: skip
    for _ in range(3000):
        body = b"".join(rng.choice(pieces) if rng.random() < 0.7 else rng.randbytes(3)
                        for _ in range(rng.randrange(30)))  # fmt: skip
        run_session(rng.choice([b"4", b"6"]) + body)


def test_checker_catches_a_forged_line() -> None:
    streams = {Side.CLIENT: bytearray(b"USER a\r\n"), Side.SERVER: bytearray()}
    with pytest.raises(AssertionError):
        check(streams, [Send(Side.SERVER, b"USER b\r\n")])
