"""Output formats of nf_nat_ftp (`nf_nat_ftp_fmt_cmd`) and the splice that keeps every other byte.

- PORT / 227: `a,b,c,d,p1,p2`, decimals without leading zeros.
- EPRT: `|1|a.b.c.d|port|`, or `|2|` + eight 4-digit lowercase hex groups, never `::`
  compressed (the kernel's `%pI6`); the delimiter is always `|`, whatever the client used.
- 229: `|||port|`.
Only the span [start, end) of a `Match` is replaced: prefix case, prose, parentheses, a
trailing dot and the CR/LF stay exactly as received.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from ftpalg.core.wire import Address, Kind, Match


class Unrepresentable(ValueError):
    """The new address cannot be written in this line's format (IPv6 into PORT/227)."""


def format_port_numbers(address: Address, port: int) -> bytes:
    if not isinstance(address, IPv4Address):
        raise Unrepresentable(f"{address} cannot be written as h1,h2,h3,h4")
    a, b, c, d = address.packed
    return b"%d,%d,%d,%d,%d,%d" % (a, b, c, d, port >> 8, port & 0xFF)


def format_eprt(address: Address, port: int) -> bytes:
    if isinstance(address, IPv6Address):
        text = address.exploded  # 8 groups of 4 lowercase hex digits, uncompressed
        return b"|2|%s|%d|" % (text.encode("ascii"), port)
    return b"|1|%s|%d|" % (str(address).encode("ascii"), port)


def format_epsv(port: int) -> bytes:
    return b"|||%d|" % port


def replacement(kind: Kind, address: Address, port: int) -> bytes:
    """The kernel's replacement text for a line of `kind` announcing `address`:`port`."""
    if kind is Kind.EPRT:
        return format_eprt(address, port)
    if kind is Kind.EPSV:
        return format_epsv(port)
    return format_port_numbers(address, port)


def splice(line: bytes, match: Match, text: bytes) -> bytes:
    """`line` with the match's span replaced by `text`."""
    return line[: match.start] + text + line[match.end :]
