"""Notice ftpalg's kernel state disappearing: its nftables table or chains, its policy-routing
rules or routes — `nft flush ruleset` (what nftables.service does on reload), `ip rule flush`,
another tool cleaning up. Without the table FTP would bypass the ALG, without the routes it
would stall; either way silently.

How this works: two netlink sockets subscribed to change notifications, no polling.
- NETLINK_NETFILTER, group NFNLGRP_NFTABLES: a `NFT_MSG_DELTABLE`, `DELCHAIN`, `DELRULE` or
  `DELSET` whose table attribute names ftpalg's table. Element changes (every pinhole) are
  ignored: they are ftpalg's own writes, many per second.
- NETLINK_ROUTE, groups RTNLGRP_IPV4/IPV6_RULE and _ROUTE: an `RTM_DELRULE` or `RTM_DELROUTE`
  for ftpalg's routing table.
`read()` drains both and says whether one of those was seen; the caller then checks and
re-installs (`ftpalg/proxy/kernel_guard.py`). The parsing is pure (`touches()`), tested on
bytes; the sockets are tested against the real kernel.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

from ftpalg.kernel.conntrack_netns import in_netns
from ftpalg.kernel.errors import KernelSetupError

NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
NFNLGRP_NFTABLES = 7
RTNLGRP = {"ipv4_route": 7, "ipv4_rule": 8, "ipv6_route": 11, "ipv6_rule": 19}
NFNL_SUBSYS_NFTABLES = 10
NFT_DELTABLE, NFT_DELCHAIN, NFT_DELRULE, NFT_DELSET = 2, 5, 8, 11
NFTA_TABLE_NAME = 1  # the table attribute is 1 in table, chain, rule and set messages
RTM_DELROUTE, RTM_DELRULE = 25, 33
RTA_TABLE = 15  # also FRA_TABLE
_NLMSG = struct.Struct("=IHHII")
_NFGEN = 4  # nfgenmsg: family, version, res_id
_RTMSG = 12  # rtmsg and fib_rule_hdr: 8 bytes of fields (+ flags u32 for rtmsg)
_FIB_RULE_HDR = 12


def _attrs(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            return
        yield kind, data[offset + _NLMSG.size : offset + length]
        offset += (length + 3) & ~3


def touches_table(data: bytes, table: str) -> bool:
    """Netfilter notifications (one datagram): did one delete something of `table`?"""
    name = table.encode()
    for kind, body in _messages(data):
        if kind >> 8 != NFNL_SUBSYS_NFTABLES:
            continue
        if kind & 0xFF not in (NFT_DELTABLE, NFT_DELCHAIN, NFT_DELRULE, NFT_DELSET):
            continue
        for attr, value in _attrs(body, _NFGEN):
            if attr == NFTA_TABLE_NAME and value.rstrip(b"\0") == name:
                return True
    return False


def touches_routing(data: bytes, route_table: int) -> bool:
    """Routing notifications (one datagram): was a rule or route of `route_table` deleted?"""
    for kind, body in _messages(data):
        if kind not in (RTM_DELROUTE, RTM_DELRULE) or len(body) < _RTMSG:
            continue
        table = body[4]  # rtm_table / fib_rule_hdr.table: the table when it fits in 8 bits
        header = _FIB_RULE_HDR if kind == RTM_DELRULE else _RTMSG
        for attr, value in _attrs(body, header):
            if attr == RTA_TABLE and len(value) == 4:
                (table,) = struct.unpack("=I", value)
        if table == route_table:
            return True
    return False


def _subscribed(protocol: int, groups: list[int], netns: str | None) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, protocol)
        try:
            sock.bind((0, 0))
            for group in groups:
                sock.setsockopt(270, 1, group)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP
        except OSError:
            sock.close()
            raise
        return sock

    try:
        return in_netns(netns, make)
    except OSError as exc:
        raise KernelSetupError(f"cannot watch netlink protocol {protocol}: {exc}") from exc


class KernelWatch:
    """The two notification sockets; `read()` on either being readable."""

    def __init__(self, table: str, route_table: int | None, netns: str | None = None) -> None:
        self.table, self.route_table = table, route_table
        self.nft = _subscribed(NETLINK_NETFILTER, [NFNLGRP_NFTABLES], netns)
        self.route: socket.socket | None = None
        try:
            if route_table is not None:
                self.route = _subscribed(NETLINK_ROUTE, list(RTNLGRP.values()), netns)
        except KernelSetupError:
            self.nft.close()
            raise

    def filenos(self) -> list[int]:
        return [s.fileno() for s in (self.nft, self.route) if s is not None]

    def read(self) -> bool:
        """Drain both sockets: True when something of ftpalg's may be gone (also when
        notifications were lost: ENOBUFS means "look for yourself")."""
        hit = False
        for sock in (self.nft, self.route):
            while sock is not None:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        hit = True
                        continue
                    raise
                if sock is self.nft:
                    hit = hit or touches_table(data, self.table)
                elif self.route_table is not None:
                    hit = hit or touches_routing(data, self.route_table)
        return hit

    def close(self) -> None:
        for sock in (self.nft, self.route):
            if sock is not None:
                sock.close()
