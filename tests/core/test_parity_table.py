"""Every tricky input of the kernel's FTP helper as a table row: the kernel's outcome (for the
record and the docs) and ftpalg's expected outcome, checked through a real core Session.

Client rows: client 172.20.9.84 seen by the server as 203.0.113.5 (NAT).
Server rows: server 172.20.9.80 reached by the client as 198.51.100.80 (DNAT).
"""

from __future__ import annotations

import pytest

from ftpalg.core.policy import CorePolicy
from tests.core.harness import CLIENT, FACES_V6, SERVER, Outcome, outcome

R = "rewrite"
REPLY = "reply"
FWD = "forward"
FWDLOG = "forward-logged"

# (§8 item, side, line, kernel outcome, ftpalg verdict, expected text / reply code prefix)
ROWS = [
    (
        "1",
        CLIENT,
        b"PORT 172,20,9,84,18,67\r\n",
        "match 4675 off 5 len 17",
        R,
        b"PORT 203,0,113,5,18,67\r\n",
    ),
    (
        "2",
        CLIENT,
        b"port 172,20,9,84,18,67\r\n",
        "match, keeps `port `",
        R,
        b"port 203,0,113,5,18,67\r\n",
    ),
    (
        "3",
        CLIENT,
        b"PORTX 172,20,9,84,18,67\r\n",
        "match (4-byte prefix)",
        R,
        b"PORTX 203,0,113,5,18,67\r\n",
    ),
    ("4", CLIENT, b"PORT  172,20,9,84,18,67\r\n", "DROP (two spaces)", REPLY, b"501 "),
    ("5", CLIENT, b"PORT 172,20,9,84,18,67\n", "DROP (bare LF)", REPLY, b"501 "),
    ("6", CLIENT, b"PORT 172,20,9,84,18,67 \r\n", "DROP (trailing space)", REPLY, b"501 "),
    ("7", CLIENT, b"PORT 172,20,9,84,18\r\n", "DROP (five fields)", REPLY, b"501 "),
    ("8a", CLIENT, b"PORT 172,20,9,84,18,67,1\r\n", "DROP (seven fields)", REPLY, b"501 "),
    ("8b", CLIENT, b"PORT 172,20,9,84,18,67,\r\n", "DROP (trailing comma)", REPLY, b"501 "),
    ("9a", CLIENT, b"PORT 172,20,9,84,,67\r\n", "match, port 67", REPLY, b"500 "),
    (
        "9b",
        CLIENT,
        b"PORT 172,20,9,84,18,\r\n",
        "match, port 4608",
        R,
        b"PORT 203,0,113,5,18,0\r\n",
    ),
    ("10a", CLIENT, b"PORT 172,20,9,84,274,67\r\n", "match, port 4675 (alias)", REPLY, b"501 "),
    ("10b", CLIENT, b"PORT 172,20,9,340,18,67\r\n", "match, 172.20.9.84 (alias)", REPLY, b"501 "),
    (
        "11",
        CLIENT,
        b"PORT 172,020,009,084,018,067\r\n",
        "match, canonical output",
        R,
        b"PORT 203,0,113,5,18,67\r\n",
    ),
    ("12", CLIENT, b"PORT 10,0,0,1,18,67\r\n", "ACCEPT unchanged, no expectation", REPLY, b"500 "),
    ("13", CLIENT, b"PORT\r\n", "DROP", REPLY, b"501 "),
    ("13b", CLIENT, b"POR\r\n", "(segment POR: DROP)", FWD, b"POR\r\n"),
    ("14", CLIENT, b" PORT 1,2,3,4,5,6\r\n", "no match", FWD, b" PORT 1,2,3,4,5,6\r\n"),
    (
        "17a",
        CLIENT,
        b"EPRT |1|172.20.9.84|4675|\r\n",
        "match len 20",
        R,
        b"EPRT |1|203.0.113.5|4675|\r\n",
    ),
    (
        "17b",
        CLIENT,
        b"EPRT !1!172.20.9.84!4675!\r\n",
        "match, output uses |",
        R,
        b"EPRT |1|203.0.113.5|4675|\r\n",
    ),
    ("18a", CLIENT, b"EPRT |2|::1|4675|\r\n", "DROP (family)", REPLY, b"501 "),
    ("18b", CLIENT, b"EPRT |3|172.20.9.84|4675|\r\n", "DROP", REPLY, b"501 "),
    ("18c", CLIENT, b"EPRT 1|1|172.20.9.84|4675|\r\n", "DROP (digit delimiter)", REPLY, b"501 "),
    ("18d", CLIENT, b"EPRT  |1|172.20.9.84|4675|\r\n", "DROP (space delimiter)", REPLY, b"501 "),
    ("19a", CLIENT, b"EPRT |1|172.20.9.84|0|\r\n", "DROP", REPLY, b"501 "),
    ("19b", CLIENT, b"EPRT |1|172.20.9.84|65536|\r\n", "DROP", REPLY, b"501 "),
    ("19c", CLIENT, b"EPRT |1|172.20.9.84|4675\r\n", "DROP", REPLY, b"501 "),
    ("19d", CLIENT, b"EPRT |1|172.20.9.84|46a5|\r\n", "DROP", REPLY, b"501 "),
    ("19e", CLIENT, b"EPRT |1|172.20.9.84|70211|\r\n", "match, port 4675 (wrap)", REPLY, b"501 "),
    (
        "20",
        CLIENT,
        b"EPRT |1|172.20.9.84|4675|junk\r\n",
        "match, junk kept",
        R,
        b"EPRT |1|203.0.113.5|4675|junk\r\n",
    ),
    (
        "22",
        SERVER,
        b"227 Entering Passive Mode (172,20,9,80,19,137).\r\n",
        "match off 27 len 18",
        R,
        b"227 Entering Passive Mode (198,51,100,80,19,137).\r\n",
    ),
    (
        "23",
        SERVER,
        b"227 Entering Passive Mode 172,20,9,80,19,137\r\n",
        "match (2.6.30: DROP)",
        R,
        b"227 Entering Passive Mode 198,51,100,80,19,137\r\n",
    ),
    ("24a", SERVER, b"227 =172,20,9,80,19,137\r\n", "match", R, b"227 =198,51,100,80,19,137\r\n"),
    (
        "24b",
        SERVER,
        b"227 (172,20,9,80,19,137) and more text\r\n",
        "match, text kept",
        R,
        b"227 (198,51,100,80,19,137) and more text\r\n",
    ),
    ("25a", SERVER, b"227 Entering Passive Mode v2 (1,2,3,4,5,6)\r\n", "DROP", FWDLOG, b""),
    ("25b", SERVER, b"227 Logout.\r\n", "DROP (stall)", FWDLOG, b""),
    ("26", SERVER, b"227-Entering Passive Mode (172,20,9,80,19,137)\r\n", "no match", FWD, b""),
    (
        "27",
        SERVER,
        b"227 Entering Passive Mode (203,0,113,80,19,137)\r\n",
        "ACCEPT unchanged, no expectation",
        R,
        b"227 Entering Passive Mode (198,51,100,80,19,137)\r\n",
    ),
    (
        "28a",
        SERVER,
        b"229 Entering Extended Passive Mode (|||6446|)\r\n",
        "match",
        R,
        b"229 Entering Extended Passive Mode (|||6446|)\r\n",
    ),
    (
        "28b",
        SERVER,
        b"229 Entering Extended Passive Mode (!!!6446!)\r\n",
        "match, output |",
        R,
        b"229 Entering Extended Passive Mode (|||6446|)\r\n",
    ),
    ("29a", SERVER, b"229 Extended Passive Mode |||6446|\r\n", "DROP", FWDLOG, b""),
    ("29b", SERVER, b"229 Extended Passive Mode (||6446|)\r\n", "DROP", FWDLOG, b""),
    ("29c", SERVER, b"229 Extended Passive Mode (|1|6446|)\r\n", "DROP", FWDLOG, b""),
    ("29d", SERVER, b"229 Extended Passive Mode ( |||6446|)\r\n", "DROP", FWDLOG, b""),
    ("29e", SERVER, b"229 Extended Passive Mode (|||0|)\r\n", "DROP", FWDLOG, b""),
    ("29f", SERVER, b"229 Extended Passive Mode (|||6446)\r\n", "DROP", FWDLOG, b""),
    ("29g", SERVER, b"229 Extended Passive Mode (|||70000|)\r\n", "match, port 4464", FWDLOG, b""),
    ("30a", SERVER, b"227 \r\n", "DROP", FWDLOG, b""),
    ("30b", SERVER, b"229\r\n", "(segment 229: DROP)", FWD, b""),
]


@pytest.mark.parametrize(
    ("item", "side", "line", "kernel", "verdict", "expected"), ROWS, ids=[r[0] for r in ROWS]
)
def test_reference_section_8(
    item: str, side: object, line: bytes, kernel: str, verdict: str, expected: bytes
) -> None:
    got = outcome(side, line)  # type: ignore[arg-type]
    assert got.verdict == verdict, (item, kernel, got)
    if verdict == R:
        assert got.text == expected
    elif verdict == REPLY:
        assert got.text.startswith(expected) and got.text.endswith(b"\r\n")


def test_parity_table_size() -> None:
    assert len(ROWS) >= 45


def test_loose_trusts_third_party_port_address() -> None:  # §8 item 12, loose = 1
    got = outcome(CLIENT, b"PORT 10,0,0,1,18,67\r\n", policy=CorePolicy(loose=True))
    assert got == Outcome("rewrite", b"PORT 203,0,113,5,18,67\r\n", "10.0.0.1:4675")


def test_strict_227_mismatch_targets_the_server_itself() -> None:  # §8 item 27
    got = outcome(SERVER, b"227 Entering Passive Mode (203,0,113,80,19,137)\r\n")
    assert got.target == "172.20.9.80:5001"
    loose = outcome(
        SERVER,
        b"227 Entering Passive Mode (203,0,113,80,19,137)\r\n",
        policy=CorePolicy(loose=True),
    )
    assert loose.target == "203.0.113.80:5001"


@pytest.mark.parametrize(
    ("line", "verdict", "expected"),
    [
        (
            b"EPRT |2|2001:db8::1|4675|\r\n",
            R,
            b"EPRT |2|2001:0db8:0002:0000:0000:0000:0000:0001|4675|\r\n",
        ),
        (
            b"EPRT |2|2001:DB8::1|4675|\r\n",
            R,
            b"EPRT |2|2001:0db8:0002:0000:0000:0000:0000:0001|4675|\r\n",
        ),
        (b"EPRT |1|1.2.3.4|4675|\r\n", REPLY, b"501 "),
        (b"EPRT |2|fe80::1%eth0|4675|\r\n", REPLY, b"501 "),
        (b"EPRT |2|[2001:db8::1]|4675|\r\n", REPLY, b"501 "),
        (b"EPRT |2|::ffff:1.2.3.4|4675|\r\n", REPLY, b"500 "),  # parses; not the client
        (b"PORT 32,1,13,184,18,67\r\n", REPLY, b"501 "),  # the kernel's IPv6 quirk: not copied
    ],
)
def test_ipv6_control_connection(line: bytes, verdict: str, expected: bytes) -> None:  # §8 #21
    got = outcome(CLIENT, line, faces=FACES_V6)
    assert got.verdict == verdict
    assert got.text.startswith(expected)


def test_ipv6_epsv_and_227() -> None:
    got = outcome(SERVER, b"229 Extended Passive Mode (|||50000|)\r\n", faces=FACES_V6)
    assert got == Outcome(
        "rewrite", b"229 Extended Passive Mode (|||50000|)\r\n", "[2001:db8:2::10]:50000"
    )
    assert outcome(SERVER, b"227 Entering (1,2,3,4,5,6)\r\n", faces=FACES_V6).verdict == FWDLOG
