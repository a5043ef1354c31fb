"""Parser details: values and byte spans as the kernel reports them (matchoff/matchlen)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpalg.core.wire import (
    Kind,
    Malformed,
    Match,
    parse_client_line,
    parse_server_line,
    try_number,
)


@pytest.mark.parametrize(
    ("line", "address", "port", "off", "length"),
    [
        (b"PORT 172,20,9,84,18,67\r\n", "172.20.9.84", 4675, 5, 17),
        (b"EPRT |1|172.20.9.84|4675|\r\n", "172.20.9.84", 4675, 5, 20),
        (b"PORT 0,0,0,0,255,255\r\n", "0.0.0.0", 65535, 5, 15),
        (b"PORT 255,255,255,255,0,1\r\n", "255.255.255.255", 1, 5, 19),
        (b"EPRT |1|1.2.3.4|65535|\r\n", "1.2.3.4", 65535, 5, 17),
        (b"EPRT |1|1.2.3.4|1|\r\n", "1.2.3.4", 1, 5, 13),
        (b"ePrT #1#10.0.0.1#21#\r\n", "10.0.0.1", 21, 5, 15),
        (b"PORT 1,2,3,4,5,6\rtrailing\n", "1.2.3.4", 1286, 5, 11),  # LF after CR unchecked
        (b"PORT ,,,,,1\r\n", "0.0.0.0", 1, 5, 6),  # empty fields are 0
    ],
)
def test_client_match_spans(line: bytes, address: str, port: int, off: int, length: int) -> None:
    m = parse_client_line(line)
    assert isinstance(m, Match)
    assert (str(m.address), m.port, m.start, m.end - m.start) == (address, port, off, length)


@pytest.mark.parametrize(
    ("line", "address", "port", "off", "length"),
    [
        (b"227 Entering Passive Mode (172,20,9,80,19,137).\r\n", "172.20.9.80", 5001, 27, 18),
        (b"227 =172,20,9,80,19,137\r\n", "172.20.9.80", 5001, 5, 18),
        (b"227 172,20,9,80,19,137\n", "172.20.9.80", 5001, 4, 18),
    ],
)
def test_227_spans(line: bytes, address: str, port: int, off: int, length: int) -> None:
    m = parse_server_line(line)
    assert isinstance(m, Match) and m.kind is Kind.PASV
    assert (str(m.address), m.port, m.start, m.end - m.start) == (address, port, off, length)


def test_229_span_covers_delimiters_not_parentheses() -> None:
    line = b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    m = parse_server_line(line)
    assert isinstance(m, Match) and m.address is None and m.port == 6446
    assert line[m.start : m.end] == b"|||6446|"


def test_eprt_ipv6_span_and_value() -> None:
    line = b"EPRT |2|2001:db8::1|4675|\r\n"
    m = parse_client_line(line, v6=True)
    assert isinstance(m, Match)
    assert m.address == IPv6Address("2001:db8::1") and line[m.start : m.end] == line[5:-2]


def test_eprt_ipv6_dotted_tail_accepted() -> None:
    m = parse_client_line(b"EPRT |2|::ffff:1.2.3.4|4675|\r\n", v6=True)
    assert isinstance(m, Match) and m.address == IPv6Address("::ffff:1.2.3.4")


@pytest.mark.parametrize(
    "line",
    [
        b"PORT 1,2,3,4,5,6",
        b"PORT 256,2,3,4,5,6\r\n",
        b"PORT 1,2,3,4,0,0\r\n",
        b"PORT 99999999999999999999,2,3,4,5,6\r\n",
        b"PORT 4294967296,2,3,4,5,6\r\n",
        b"EPRT |1|1.2.3|4|\r\n",
        b"EPRT |1|1.2.3.256|4|\r\n",
        b"EPRT |1\r\n",
        b"EPRT\r\n",
        b"EPRT |1|1.2.3.4||\r\n",
        b"EPRT |1|1.2.3.4|99999999999|\r\n",
    ],
)
def test_client_malformed(line: bytes) -> None:
    assert isinstance(parse_client_line(line), Malformed)


def test_huge_field_does_not_wrap_into_range() -> None:
    # 4294967296 wraps to 0 in the kernel's u32 accumulator; ftpalg refuses it instead
    assert isinstance(parse_client_line(b"PORT 4294967297,2,3,4,5,6\r\n"), Malformed)


@pytest.mark.parametrize("line", [b"USER x\r\n", b"PASV\r\n", b"EPSV\r\n", b"PO\r\n", b"\r\n"])
def test_client_no_match(line: bytes) -> None:
    assert parse_client_line(line) is None


@pytest.mark.parametrize("line", [b"2270 x\r\n", b"228 (1,2,3,4,5,6)\r\n", b"229-x\r\n", b"\n"])
def test_server_no_match(line: bytes) -> None:
    assert parse_server_line(line) is None


def test_try_number_rules() -> None:
    assert try_number(b"1,,3\r", 0, 3, 44, 13) == ([1, 0, 3], 4)
    assert try_number(b"1,2,3", 0, 3, 44, 13) is None  # ran out of bytes
    assert try_number(b"1,2,3,4\r", 0, 3, 44, 13) is None  # too many separators
    assert try_number(b"1,2\r", 0, 3, 44, 13) is None  # terminator too early
    assert try_number(b"1,2,3)", 0, 3, 44, None) == ([1, 2, 3], 5)  # any byte ends it


@given(st.binary(max_size=300))
def test_parsers_never_raise(data: bytes) -> None:
    for v6 in (False, True):
        for prefix in (b"PORT ", b"EPRT ", b"port", b""):
            r = parse_client_line(prefix + data, v6)
            assert r is None or isinstance(r, Malformed | Match)
        for prefix in (b"227 ", b"229 (", b""):
            r = parse_server_line(prefix + data, v6)
            assert r is None or isinstance(r, Malformed | Match)


@given(
    st.tuples(*[st.integers(0, 255)] * 4),
    st.integers(1, 65535),
    st.sampled_from([b"PORT ", b"port ", b"Port "]),
)
def test_port_roundtrip(octets: tuple[int, int, int, int], port: int, prefix: bytes) -> None:
    text = b"%d,%d,%d,%d,%d,%d" % (*octets, port >> 8, port & 255)
    m = parse_client_line(prefix + text + b"\r\n")
    assert isinstance(m, Match)
    assert m.address == IPv4Address(bytes(octets)) and m.port == port
    assert (m.start, m.end) == (len(prefix), len(prefix) + len(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2001:db8:1::00002", "2001:db8:1::2"),
        ("::0.0.0.02", "::2"),
        ("0002001:db8::1", "2001:db8::1"),
        ("2001:db8::10002", None),
        ("::1.2.3.256", None),
        ("1::2::3", None),
    ],
)
def test_eprt_ipv6_accepts_leading_zeros_like_in6_pton(text: str, expected: str | None) -> None:
    m = parse_client_line(f"EPRT |2|{text}|4675|\r\n".encode(), v6=True)
    if expected is None:
        assert isinstance(m, Malformed)
    else:
        assert isinstance(m, Match) and m.address == IPv6Address(expected)
