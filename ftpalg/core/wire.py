"""Parsers for the four address-bearing FTP lines, mirroring Linux nf_conntrack_ftp.

How this works (net/netfilter/nf_conntrack_ftp.c: `find_pattern`, `try_rfc959`,
`try_rfc1123`, `try_eprt`, `try_epsv_response`; docs/core.md). Each parser gets one complete line
and returns `None` (not an address line), `Malformed` (the kernel would match the prefix but
fail to parse: a PARTIAL result that it drops forever), or a `Match` carrying the value and
the byte span [start, end) of the text a rewrite may replace.

- Client lines: `PORT` / `EPRT` by a case-insensitive 4-byte prefix (so `PORTX` matches too);
  parsing starts right after the *first* space anywhere after the prefix.
- Server lines: `227 ` / `229 ` including the space, so `227-` continuation lines never match.
- `try_number` accumulates digits per field; empty fields are 0; a separator moves to the next
  field; any other byte ends the text only inside the last field and only if it is the
  terminator (or any byte when the terminator is None, as the kernel's 227 parser does).
  Running out of bytes is a failure: the text must be followed by one more byte.
- We are stricter than the kernel: a field above 255 or a port above 65535 (which the kernel
  aliases into neighbouring bytes or wraps to 16 bits) and port 0 are `Malformed`.
- The address family must match the control connection: EPRT `|1|` on IPv4 and `|2|` on IPv6
  (kernel rule); PORT and 227 carry IPv4 only, so on IPv6 they are `Malformed` (the kernel's
  first-32-bits quirk of `get_ipv6_addr` is deliberately not copied).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

Address = IPv4Address | IPv6Address

_DIGITS = frozenset(b"0123456789")
_HEX_V6 = frozenset(b"0123456789abcdefABCDEF:.")


class Kind(enum.Enum):
    PORT = "PORT"
    EPRT = "EPRT"
    PASV = "227"
    EPSV = "229"

    @property
    def from_client(self) -> bool:
        return self in (Kind.PORT, Kind.EPRT)


@dataclass(frozen=True, slots=True)
class Match:
    kind: Kind
    address: Address | None  # None for 229: the reply names no address
    port: int
    start: int  # first byte of the replaceable text
    end: int  # one past its last byte


@dataclass(frozen=True, slots=True)
class Malformed:
    kind: Kind
    reason: str


Parsed = Match | Malformed | None


def _is_delimiter(byte: int) -> bool:
    """RFC 2428 delimiter as the kernel checks it: printable 33..126 and not a digit."""
    return 33 <= byte <= 126 and byte not in _DIGITS


def try_number(
    data: bytes, start: int, count: int, sep: int, term: int | None
) -> tuple[list[int], int] | None:
    """Kernel try_number from `start`: (fields, length of the number text), or None on failure.

    Field values are capped at 256 (anything above 255 is refused by the callers), so a huge
    digit string can neither grow without bound nor wrap back into range as the kernel's u32
    accumulator does.
    """
    fields = [0] * count
    index = 0
    for pos in range(start, len(data)):
        byte = data[pos]
        if byte in _DIGITS:
            fields[index] = min(fields[index] * 10 + (byte - 48), 256)
        elif byte == sep:
            index += 1
            if index == count:
                return None
        elif index == count - 1 and (term is None or byte == term):
            return fields, pos - start
        else:
            return None
    return None


def _octets(fields: list[int]) -> bool:
    return all(f <= 255 for f in fields)


def _get_port(data: bytes, start: int, delim: int) -> tuple[int, int] | str:
    """Kernel get_port: digits up to `delim`; returns (port, index after delim) or a reason."""
    port = 0
    for pos in range(start, len(data)):
        byte = data[pos]
        if byte == delim:
            if port == 0:
                return "port 0"
            if port > 65535:
                return "port above 65535"
            return port, pos + 1
        if byte not in _DIGITS:
            return "non-digit in port"
        port = min(port * 10 + (byte - 48), 65536)  # capped: anything above 65535 is refused
    return "port not closed by its delimiter"


def _six_numbers(kind: Kind, result: tuple[list[int], int], start: int, v6: bool) -> Parsed:
    """h1,h2,h3,h4,p1,p2 (PORT and 227) as a Match, or why it is refused."""
    fields, length = result
    if not _octets(fields):
        return Malformed(kind, "number above 255")
    port = fields[4] << 8 | fields[5]
    if port == 0:
        return Malformed(kind, "port 0")
    if v6:
        return Malformed(kind, f"{kind.value} names an IPv4 address on an IPv6 connection")
    return Match(kind, IPv4Address(bytes(fields[:4])), port, start, start + length)


def _parse_port(line: bytes, v6: bool) -> Parsed:
    space = line.find(b" ", 4)
    if space < 0:
        return Malformed(Kind.PORT, "no space after PORT")
    start = space + 1
    result = try_number(line, start, 6, 44, 13)  # ',' separated, CR right after the 6th
    if result is None:
        return Malformed(Kind.PORT, "expected h1,h2,h3,h4,p1,p2 followed by CR")
    return _six_numbers(Kind.PORT, result, start, v6)


def _parse_eprt(line: bytes, v6: bool) -> Parsed:
    space = line.find(b" ", 4)
    if space < 0:
        return Malformed(Kind.EPRT, "no space after EPRT")
    start = space + 1
    if len(line) - start <= 3:
        return Malformed(Kind.EPRT, "too short")
    delim = line[start]
    if not _is_delimiter(delim) or line[start + 2] != delim:
        return Malformed(Kind.EPRT, "invalid delimiter")
    family = line[start + 1]
    if family != (50 if v6 else 49):  # '2' on IPv6 connections, '1' on IPv4 ones
        return Malformed(Kind.EPRT, "address family does not match the connection")
    addr_start = start + 3
    address: Address
    if not v6:
        result = try_number(line, addr_start, 4, 46, delim)
        if result is None:
            return Malformed(Kind.EPRT, "bad IPv4 address")
        if not _octets(result[0]):
            return Malformed(Kind.EPRT, "number above 255")
        address = IPv4Address(bytes(result[0]))
        addr_end = addr_start + result[1]
    else:
        addr_end = line.find(bytes([delim]), addr_start)
        text = line[addr_start:addr_end] if addr_end >= 0 else b""
        if not text or not set(text) <= _HEX_V6:
            return Malformed(Kind.EPRT, "bad IPv6 address")
        parsed_v6 = _ipv6(text.decode("ascii"))
        if parsed_v6 is None:
            return Malformed(Kind.EPRT, "bad IPv6 address")
        address = parsed_v6
    port = _get_port(line, addr_end + 1, delim)
    if isinstance(port, str):
        return Malformed(Kind.EPRT, port)
    return Match(Kind.EPRT, address, port[0], start, port[1])


def _ipv6(text: str) -> IPv6Address | None:
    """The kernel's in6_pton: like `IPv6Address`, but a group may carry any number of leading
    zeros (its value must fit 16 bits) and so may the octets of a dotted IPv4 tail."""
    groups = text.split(":")
    tail = groups[-1]
    if "." in tail:
        octets = tail.split(".")
        if len(octets) != 4 or not all(o.isdigit() and int(o) <= 255 for o in octets):
            return None
        groups[-1] = ".".join(str(int(o)) for o in octets)
    for i, group in enumerate(groups if "." not in tail else groups[:-1]):
        if group:
            stripped = group.lstrip("0") or "0"
            if len(stripped) > 4:
                return None
            groups[i] = stripped
    try:
        return IPv6Address(":".join(groups))
    except ValueError:
        return None


def _parse_227(line: bytes, v6: bool) -> Parsed:
    first_digit = next((i for i in range(4, len(line)) if line[i] in _DIGITS), -1)
    if first_digit < 0:
        return Malformed(Kind.PASV, "no address in 227 reply")
    result = try_number(line, first_digit, 6, 44, None)
    if result is None:
        return Malformed(Kind.PASV, "expected h1,h2,h3,h4,p1,p2")
    return _six_numbers(Kind.PASV, result, first_digit, v6)


def _parse_229(line: bytes, v6: bool) -> Parsed:
    paren = line.find(b"(", 4)
    if paren < 0:
        return Malformed(Kind.EPSV, "no '(' in 229 reply")
    start = paren + 1
    if len(line) - start <= 3:
        return Malformed(Kind.EPSV, "too short")
    delim = line[start]
    if not _is_delimiter(delim) or line[start + 1] != delim or line[start + 2] != delim:
        return Malformed(Kind.EPSV, "expected three equal delimiters")
    port = _get_port(line, start + 3, delim)
    if isinstance(port, str):
        return Malformed(Kind.EPSV, port)
    return Match(Kind.EPSV, None, port[0], start, port[1])


def parse_client_line(line: bytes, v6: bool = False) -> Parsed:
    """A client line: PORT or EPRT by case-insensitive 4-byte prefix, else None."""
    prefix = line[:4].upper()
    if prefix == b"PORT":
        return _parse_port(line, v6)
    if prefix == b"EPRT":
        return _parse_eprt(line, v6)
    return None


def parse_server_line(line: bytes, v6: bool = False) -> Parsed:
    """A server line: `227 ` or `229 ` (with the space), else None."""
    prefix = line[:4]
    if prefix == b"227 ":
        return _parse_227(line, v6)
    if prefix == b"229 ":
        return _parse_229(line, v6)
    return None
