"""Output formats, the seed capture (frame 13, docs/parity.md) and the port chooser."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv6Address

import pytest

from ftpalg.core.ledger import SeqCorrection, seq_after
from ftpalg.core.messages import ListenerOpened, OpenListener, Send
from ftpalg.core.ports import PortChooser
from ftpalg.core.rewrite import (
    Unrepresentable,
    format_eprt,
    format_epsv,
    format_port_numbers,
)
from ftpalg.core.session import Faces
from tests.core.harness import CLIENT, SERVER, ep, new_session


def test_formats() -> None:
    assert format_port_numbers(IPv4Address("10.0.0.5"), 1025) == b"10,0,0,5,4,1"
    assert format_eprt(IPv4Address("203.0.113.1"), 42843) == b"|1|203.0.113.1|42843|"
    assert (
        format_eprt(IPv6Address("2001:db8::1"), 4675)
        == b"|2|2001:0db8:0000:0000:0000:0000:0000:0001|4675|"
    )
    assert len(format_eprt(IPv6Address("ffff:" * 7 + "ffff"), 65535)) == 49  # kernel max
    assert format_epsv(6446) == b"|||6446|"
    with pytest.raises(Unrepresentable):
        format_port_numbers(IPv6Address("::1"), 21)


SEED_PREFIX = b"USER anonymous\r\nPASS secret@x\r\n"  # 31 bytes: the PORT starts at seq 32
SEED_PORT = b"PORT 172,20,9,84,18,67\r\n"


def seed_session(client_face: str) -> tuple[object, bytes]:
    faces = Faces(
        client=ep("172.20.9.84:4666"),
        server=ep("172.20.9.80:21"),
        server_face=ep("172.20.9.80:21"),
        client_face=ep(client_face),
    )
    s = new_session(faces)
    assert len(SEED_PREFIX) == 31
    actions = s.receive(CLIENT, SEED_PREFIX + SEED_PORT, 0.0)
    (open_,) = [a for a in actions if isinstance(a, OpenListener)]
    assert open_.port == 4675
    sent = [
        a.data
        for a in s.handle(ListenerOpened(open_.listener, 4675), 0.0)
        if isinstance(a, Send) and a.side is SERVER
    ]
    return s, sent[0]


def test_seed_case_a_same_length_no_record() -> None:
    s, line = seed_session("203.0.113.5:4666")
    assert line == b"PORT 203,0,113,5,18,67\r\n"
    ledger = s.ledger[CLIENT]  # type: ignore[attr-defined]
    assert (ledger.correction_pos, ledger.offset_before, ledger.offset_after) == (0, 0, 0)
    assert ledger.map_seq(56) == 56 and ledger.map_ack(56) == 56


def test_seed_case_c_delta_plus_3_matches_kernel_table() -> None:
    s, line = seed_session("198.51.100.200:4666")
    assert line == b"PORT 198,51,100,200,18,67\r\n" and len(line) == 27
    c2s: SeqCorrection = s.ledger[CLIENT]  # type: ignore[attr-defined]
    s2c: SeqCorrection = s.ledger[SERVER]  # type: ignore[attr-defined]
    assert (c2s.correction_pos, c2s.offset_before, c2s.offset_after) == (32, 0, 3)
    assert (s2c.correction_pos, s2c.offset_before, s2c.offset_after) == (0, 0, 0)
    # the kernel's correction record after each packet of the seed capture, row by row
    assert c2s.map_seq(32) == 32  # the PORT itself: + offset_before
    assert c2s.map_ack(59) == 56  # server's ACK of it
    assert c2s.map_seq(56) == 59  # LIST after it
    assert c2s.map_ack(65) == 62  # ACK of LIST
    assert (c2s.map_ack(59), c2s.map_ack(65)) == (56, 62)  # SACK block [59,65)
    assert s2c.map_seq(95) == 95  # server data unchanged
    # a retransmission of the PORT at 32 is rewritten again but not recorded again
    assert not c2s.record(32, 3)
    assert (c2s.correction_pos, c2s.offset_before, c2s.offset_after) == (32, 0, 3)


def test_ledger_accumulates_and_ignores_older_positions() -> None:
    led = SeqCorrection()
    assert not led.record(10, 0)
    assert led.record(10, 2)
    assert not led.record(5, 4)  # at or before the pending position: ignored (kernel case 2)
    assert led.record(100, -1)
    assert (led.correction_pos, led.offset_before, led.offset_after) == (100, 2, 1)
    assert seq_after(5, 2**32 - 5) and not seq_after(2**32 - 5, 5)


def test_port_chooser_original_first_then_random_in_range() -> None:
    chooser = PortChooser(4675, (50000, 50009), random.Random(7), tries=100)
    assert chooser.first == 4675
    ports = [chooser.next_port() for _ in range(10)]
    assert sorted(p for p in ports if p is not None) == list(range(50000, 50010))
    assert chooser.next_port() is None


def test_port_chooser_gives_up_after_tries() -> None:
    chooser = PortChooser(4675, (1024, 65535), random.Random(1), tries=3)
    got = [chooser.next_port() for _ in range(4)]
    assert got[3] is None and all(isinstance(p, int) for p in got[:3])
