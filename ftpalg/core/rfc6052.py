"""IPv4-embedded IPv6 addresses (RFC 6052): the NAT64 prefix, embedding and extraction.

How this works (RFC 6052 §2.2). A NAT64 prefix is 32, 40, 48, 56, 64 or 96 bits long. The
32 bits of the IPv4 address follow the prefix, except that bits 64 to 71 (byte 8, the "u"
octet) are never used: they stay zero, and an IPv4 address that would cross them continues
after them. What follows the IPv4 address up to bit 127 is the suffix, zero.

    PL | byte 0 ...   4   5   6   7 | 8 | 9  10  11  12  13  14  15
    32 | prefix     | v4  v4  v4  v4| u | suffix
    40 | prefix         | v4  v4  v4| u | v4 | suffix
    48 | prefix             | v4  v4| u | v4  v4 | suffix
    56 | prefix                 | v4| u | v4  v4  v4 | suffix
    64 | prefix                     | u | v4  v4  v4  v4 | suffix
    96 | prefix (its byte 8 is the u octet: zero)   | v4  v4  v4  v4

`extract` is the exact inverse of `embed`: an address outside the prefix, or inside it with
a non-zero u octet or suffix, is no address `embed` makes and gives None.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

LENGTHS = (32, 40, 48, 56, 64, 96)
WELL_KNOWN = IPv6Network("64:ff9b::/96")  # RFC 6052 §2.1
_U_OCTET = 8


def parse_prefix(text: str) -> IPv6Network:
    """A NAT64 prefix from `64:ff9b::/96`; ValueError with a one-line reason naming the rule."""
    if "/" not in text:
        raise ValueError(f"{text!r}: expected an IPv6 prefix with its length, e.g. 64:ff9b::/96")
    try:
        network = IPv6Network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 prefix (e.g. 64:ff9b::/96)") from None
    if network.prefixlen not in LENGTHS:
        lengths = ", ".join(map(str, LENGTHS[:-1])) + f" or {LENGTHS[-1]}"
        raise ValueError(f"{text!r}: RFC 6052 allows the prefix lengths {lengths} only")
    if IPv6Address(text.split("/", 1)[0]) != network.network_address:
        raise ValueError(f"{text!r} has bits set after its length (write {network})")
    if network.network_address.packed[_U_OCTET] != 0:
        raise ValueError(f"{text!r}: bits 64-71 (the u octet) must be zero (RFC 6052 §2.2)")
    return network


def check_prefix(network: IPv6Network) -> IPv6Network:
    """The checks of `parse_prefix` for a network made elsewhere (Config's own check)."""
    if not isinstance(network, IPv6Network):
        raise TypeError("an IPv6 network")
    return parse_prefix(str(network))


def _positions(prefixlen: int) -> list[int]:
    """The four bytes of the address that carry the IPv4 address, in order."""
    return [i for i in range(prefixlen // 8, 16) if i != _U_OCTET][:4]


def embed(prefix: IPv6Network, ipv4: IPv4Address) -> IPv6Address:
    """The IPv4-embedded IPv6 address of `ipv4` under `prefix` (u octet and suffix zero)."""
    out = bytearray(prefix.network_address.packed)
    for position, byte in zip(_positions(prefix.prefixlen), ipv4.packed, strict=True):
        out[position] = byte
    return IPv6Address(bytes(out))


def extract(prefix: IPv6Network, ipv6: IPv6Address) -> IPv4Address | None:
    """The IPv4 address embedded in `ipv6`, or None when `ipv6` is not in the prefix or is
    not an address `embed` makes (non-zero u octet or suffix)."""
    if ipv6 not in prefix:
        return None
    packed = ipv6.packed
    positions = _positions(prefix.prefixlen)
    zero = [*range(positions[-1] + 1, 16), _U_OCTET]  # the suffix and the u octet
    if any(packed[i] for i in zero if i >= prefix.prefixlen // 8):
        return None
    return IPv4Address(bytes(packed[i] for i in positions))
