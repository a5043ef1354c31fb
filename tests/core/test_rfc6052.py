"""RFC 6052 address embedding: the RFC's own examples (§2.4), the prefix rules (§2.2) and
generated round trips."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpalg.core.rfc6052 import LENGTHS, WELL_KNOWN, check_prefix, embed, extract, parse_prefix

# RFC 6052 §2.4, the table "Text Representation of IPv4-Embedded IPv6 Address"
RFC_TABLE = [
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
    ("64:ff9b::/96", "64:ff9b::192.0.2.33"),
]
EXAMPLE = IPv4Address("192.0.2.33")


@pytest.mark.parametrize(("prefix", "embedded"), RFC_TABLE)
def test_rfc_6052_examples(prefix: str, embedded: str) -> None:
    network = parse_prefix(prefix)
    assert embed(network, EXAMPLE) == IPv6Address(embedded)
    assert extract(network, IPv6Address(embedded)) == EXAMPLE


def test_well_known_prefix() -> None:
    assert embed(WELL_KNOWN, EXAMPLE) == IPv6Address("64:ff9b::c000:221")
    assert extract(WELL_KNOWN, IPv6Address("64:ff9b::cb00:710a")) == IPv4Address("203.0.113.10")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("64:ff9b::/80", "prefix lengths 32, 40, 48, 56, 64 or 96 only"),
        ("64:ff9b::/128", "prefix lengths"),
        ("64:ff9b::", "with its length"),
        ("192.0.2.0/24", "not an IPv6 prefix"),
        ("64:ff9b::zz/96", "not an IPv6 prefix"),
        ("64:ff9b::1/96", "bits set after its length (write 64:ff9b::/96)"),
        ("2001:db8:0:0:100::/96", "the u octet"),
        ("2001:db8:0:0:ff00::/96", "RFC 6052 §2.2"),
    ],
)
def test_bad_prefixes(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_prefix(text)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_u_octet_may_follow_a_short_prefix() -> None:
    """Below /72 bits 64-71 are not part of the prefix: nothing to check there."""
    assert parse_prefix("2001:db8:122:344::/64").prefixlen == 64
    assert check_prefix(IPv6Network("64:ff9b::/96")) == WELL_KNOWN
    with pytest.raises(ValueError, match="u octet"):
        check_prefix(IPv6Network("2001:db8::100:0:0:0/96"))


@pytest.mark.parametrize(
    ("prefix", "address"),
    [
        ("64:ff9b::/96", "2001:db8::c000:221"),  # another network
        ("64:ff9b::/96", "64:ff9c::c000:221"),
        ("2001:db8:122:344::/64", "2001:db8:122:344:1c0:2:2100:0"),  # u octet set
        ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:1"),  # suffix set
        ("2001:db8::/32", "2001:db8:c000:221::1"),  # suffix set
        ("2001:db8:100::/40", "2001:db8:1c0:2:21:0:0:1"),
    ],
)
def test_not_embedded(prefix: str, address: str) -> None:
    assert extract(parse_prefix(prefix), IPv6Address(address)) is None


def _prefixes() -> st.SearchStrategy[IPv6Network]:
    def make(length: int, bits: int) -> IPv6Network:
        value = bits >> (128 - length) << (128 - length)
        value &= ~(0xFF << 56)  # bits 64-71 zero
        return IPv6Network((value, length))

    return st.builds(make, st.sampled_from(LENGTHS), st.integers(0, 2**128 - 1))


IPV4 = st.integers(0, 2**32 - 1).map(IPv4Address)
IPV6 = st.integers(0, 2**128 - 1).map(IPv6Address)


@given(_prefixes(), IPV4)
def test_round_trip(prefix: IPv6Network, ipv4: IPv4Address) -> None:
    assert parse_prefix(str(prefix)) == prefix
    embedded = embed(prefix, ipv4)
    assert embedded in prefix
    assert embedded.packed[8] == 0  # the u octet
    assert extract(prefix, embedded) == ipv4


@given(_prefixes(), IPV6)
def test_extract_inverts_embed(prefix: IPv6Network, address: IPv6Address) -> None:
    """Any address: extraction gives None, or the IPv4 address that embeds back to it."""
    ipv4 = extract(prefix, address)
    if address not in prefix:
        assert ipv4 is None
    if ipv4 is not None:
        assert embed(prefix, ipv4) == address
