"""Conntrack events and accounting (ftpalg.kernel.conntrack*): the wire format and the payload
arithmetic (pure, the decoder checked against pyroute2's ``nfct_msg``), then the real kernel in
a private client — gateway — server lab: tagged forwarded TCP, 1 MiB and 0 bytes each way over
IPv4 and IPv6, start and end events, counters by query, the payload bound and the exact
NFLOG method, lost packets, the kernel-side mark filter, ENOBUFS and the dump re-sync, sysctls.

The lab prints one ``conntrack-timing`` line per transfer (run with ``-s`` to see them): how
long after the receiver saw EOF / closed its socket the end of the data direction and the
end of the connection were read from the watcher (negative: before).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from ftpalg.kernel import KernelSetupError
from ftpalg.kernel.conntrack import (
    ConntrackOverflow,
    ConntrackWatcher,
    Counters,
    CtEvent,
    CtKind,
    CtTuple,
    TcpState,
    conntrack_sysctls,
    ensure_conntrack_sysctls,
)
from ftpalg.kernel.conntrack_netns import in_netns, netlink_socket
from ftpalg.kernel.conntrack_nflog import SegmentLog, nflog_rule, parse_tcp, record
from ftpalg.kernel.conntrack_payload import (
    PayloadEstimate,
    SeqLedger,
    estimate_payload,
    legs,
    seq_payload,
)
from ftpalg.kernel.conntrack_wire import (
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_REPLY,
    CTA_ID,
    CTA_MARK,
    CTA_PROTOINFO,
    CTA_STATUS,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_NEW,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLMSG_ERROR,
    attr,
    decode,
    encode_tuple,
    error_code,
    event_kind,
    messages,
    nested,
    request,
)
from tests.requirements import unavailable

TAG = 0x80001234  # what the lab's pinhole stand-in sets on port 5001 (and 5003)
TAG_MASK = 0x80000000  # "admitted by ftpalg"
NFLOG_GROUP = 7
MIB = 1 << 20
CTA_TIMEOUT = 7


# --- pure: wire format ---------------------------------------------------------------------


def _ct_message(kind: int, flags: int, family: int, orig: CtTuple, **extra: bytes) -> bytes:
    body = encode_tuple(CTA_TUPLE_ORIG, orig) + encode_tuple(CTA_TUPLE_REPLY, orig.reversed())
    body += b"".join(extra.values())
    return request(kind, flags, 1, family, body)


def _be32(atype: int, value: int) -> bytes:
    return attr(atype, struct.pack(">I", value))


def _counters(atype: int, packets: int, nbytes: int) -> bytes:
    return nested(atype, attr(1, struct.pack(">Q", packets)), attr(2, struct.pack(">Q", nbytes)))


def _protoinfo(state: int, flags: tuple[int, int]) -> bytes:
    tcp = (
        attr(1, bytes([state]))
        + attr(4, bytes([flags[0], 0xFF]))
        + attr(5, bytes([flags[1], 0xFF]))
    )
    return nested(CTA_PROTOINFO, nested(1, tcp))


T4 = CtTuple(4, 6, "10.1.2.3", "198.51.100.7", 40000, 5001)
T6 = CtTuple(6, 6, "2001:db8::1", "2001:db8:1::2", 40001, 21)


@pytest.mark.parametrize("orig", [T4, T6])
def test_decode_matches_pyroute2(orig: CtTuple) -> None:
    af = socket.AF_INET if orig.family == 4 else socket.AF_INET6
    raw = _ct_message(
        IPCTNL_MSG_CT_DELETE,
        0,
        af,
        orig,
        status=_be32(CTA_STATUS, 14),
        mark=_be32(CTA_MARK, TAG),
        ident=_be32(CTA_ID, 0xDEADBEEF),
        proto=_protoinfo(TcpState.TIME_WAIT, (0x27, 0x23)),
        co=_counters(CTA_COUNTERS_ORIG, 24, 1256),
        cr=_counters(CTA_COUNTERS_REPLY, 26, 1049936),
    )
    [(mtype, flags, _seq, start, end)] = list(messages(raw))
    kind = event_kind(mtype, flags)
    assert kind is CtKind.DESTROY
    ev = decode(raw, start, end, kind)
    assert ev == CtEvent(
        kind=CtKind.DESTROY,
        ct_id=0xDEADBEEF,
        mark=TAG,
        orig=orig,
        reply=orig.reversed(),
        tcp_state=TcpState.TIME_WAIT,
        orig_counters=Counters(24, 1256),
        reply_counters=Counters(26, 1049936),
        status=14,
        tcp_flags=(0x27, 0x23),
    )
    _same_as_pyroute2(raw, ev)


def _same_as_pyroute2(raw: bytes, ev: CtEvent) -> None:
    """The independent decoder (pyroute2's nfct_msg) reads the same fields."""
    msg = nfct_msg(raw)
    msg.decode()
    ip = "CTA_IP_V4" if ev.orig.family == 4 else "CTA_IP_V6"
    for key, tup in (("CTA_TUPLE_ORIG", ev.orig), ("CTA_TUPLE_REPLY", ev.reply)):
        t = msg.get_attr(key)
        proto = t.get_attr("CTA_TUPLE_PROTO")
        assert t.get_attr("CTA_TUPLE_IP").get_attr(f"{ip}_SRC") == tup.src
        assert t.get_attr("CTA_TUPLE_IP").get_attr(f"{ip}_DST") == tup.dst
        assert proto.get_attr("CTA_PROTO_NUM") == tup.proto
        assert proto.get_attr("CTA_PROTO_SRC_PORT") == tup.sport
        assert proto.get_attr("CTA_PROTO_DST_PORT") == tup.dport
    assert (msg.get_attr("CTA_MARK") or 0) == ev.mark
    assert (msg.get_attr("CTA_ID") or 0) == ev.ct_id
    pinfo = msg.get_attr("CTA_PROTOINFO")
    state = (
        pinfo.get_attr("CTA_PROTOINFO_TCP").get_attr("CTA_PROTOINFO_TCP_STATE") if pinfo else None
    )
    assert state == (int(ev.tcp_state) if ev.tcp_state is not None else None)
    for key, c in (
        ("CTA_COUNTERS_ORIG", ev.orig_counters),
        ("CTA_COUNTERS_REPLY", ev.reply_counters),
    ):
        got = msg.get_attr(key)
        if c is None:
            assert got is None
        else:
            assert (got.get_attr("CTA_COUNTERS_PACKETS"), got.get_attr("CTA_COUNTERS_BYTES")) == (
                c.packets,
                c.bytes,
            )


class _Queued:
    """A stand-in for the watcher's socket: these datagrams, then EAGAIN."""

    def __init__(self, *datagrams: bytes) -> None:
        self.datagrams = list(datagrams)

    def recv(self, _size: int) -> bytes:
        if not self.datagrams:
            raise BlockingIOError
        return self.datagrams.pop(0)


def _watcher_reading(*datagrams: bytes) -> ConntrackWatcher:
    watcher = ConntrackWatcher.__new__(ConntrackWatcher)
    watcher.mark, watcher.mask, watcher.max_messages, watcher.overflows = TAG_MASK, TAG_MASK, 64, 0
    watcher._sock = _Queued(*datagrams)  # type: ignore[assignment]
    return watcher


def test_read_decodes_only_what_is_chosen() -> None:
    """read(choose): skipped events are not decoded; later events of a conntrack borrow the
    tuples of an earlier one (the caller's, or one decoded earlier in the same read) and
    decode to what a full decode gives."""
    af4, af6 = socket.AF_INET, socket.AF_INET6
    create = NLM_F_CREATE | NLM_F_EXCL

    def msg(flags: int, af: int, orig: CtTuple, ident: int, mark: int, state: int) -> bytes:
        return _ct_message(
            IPCTNL_MSG_CT_NEW,
            flags,
            af,
            orig,
            mark=_be32(CTA_MARK, mark),
            ident=_be32(CTA_ID, ident),
            proto=_protoinfo(state, (0x04, 0)),
        )

    one = [
        msg(create, af4, T4, 1, TAG, TcpState.SYN_SENT),
        msg(0, af4, T4, 1, TAG, TcpState.ESTABLISHED),
        msg(create, af6, T6, 2, TAG + 1, TcpState.SYN_SENT),  # not chosen
        msg(0, af4, T4, 3, 0x1234, TcpState.ESTABLISHED),  # not tagged
    ]
    two = [msg(0, af4, T4, 1, TAG, TcpState.FIN_WAIT), msg(0, af6, T6, 2, TAG + 1, 3)]

    def full(raw: bytes) -> CtEvent:
        [(mtype, flags, _seq, start, end)] = list(messages(raw))
        kind = event_kind(mtype, flags)
        assert kind is not None
        return decode(raw, start, end, kind)

    asked: list[tuple[int, int]] = []

    def choose(ct_id: int, mark: int) -> CtEvent | bool:
        asked.append((ct_id, mark))
        return ct_id == 1

    watcher = _watcher_reading(b"".join(one), b"".join(two))
    first = watcher.read(choose)
    assert first == [full(one[0]), full(one[1]), full(two[0])]
    assert first[1].orig is first[0].orig and first[2].reply is first[0].reply
    assert asked == [(1, TAG), (1, TAG), (2, TAG + 1), (1, TAG), (2, TAG + 1)]
    watcher = _watcher_reading(two[0])
    [later] = watcher.read(lambda ct_id, mark: first[0] if ct_id == 1 else False)
    assert later == full(two[0]) and later.orig is first[0].orig
    assert _watcher_reading(*one).read() == [full(one[0]), full(one[1]), full(one[2])]


def test_event_kinds() -> None:
    new = (1 << 8) | IPCTNL_MSG_CT_NEW
    assert event_kind(new, NLM_F_CREATE | NLM_F_EXCL) is CtKind.NEW
    assert event_kind(new, 0) is CtKind.UPDATE
    assert event_kind((1 << 8) | IPCTNL_MSG_CT_DELETE, 0) is CtKind.DESTROY
    assert event_kind((2 << 8) | IPCTNL_MSG_CT_NEW, 0) is None  # an expectation, not a conntrack
    assert event_kind(NLMSG_ERROR, 0) is None


def _ev(state: TcpState | None, flags: tuple[int, int] | None = None) -> CtEvent:
    return CtEvent(CtKind.UPDATE, 1, TAG, T4, T4.reversed(), tcp_state=state, tcp_flags=flags)


def test_fin_sent_per_direction() -> None:
    # The first FIN's sender carries CLOSE_INIT (0x04); the other direction has not ended.
    assert [_ev(TcpState.FIN_WAIT, (0x37, 0x23)).fin_sent(d) for d in (0, 1)] == [True, False]
    assert [_ev(TcpState.CLOSE_WAIT, (0x23, 0x27)).fin_sent(d) for d in (0, 1)] == [False, True]
    for state in (TcpState.LAST_ACK, TcpState.TIME_WAIT, TcpState.CLOSE):
        assert _ev(state, (0, 0)).fin_sent(0) and _ev(state).fin_sent(1) and _ev(state).ending
    assert _ev(TcpState.ESTABLISHED).fin_sent(1) is False and not _ev(TcpState.ESTABLISHED).ending
    assert _ev(None).fin_sent(0) is None  # an UPDATE without protoinfo (e.g. status only)
    gone = CtEvent(CtKind.DESTROY, 1, TAG, T4, T4.reversed())
    assert gone.fin_sent(0) and gone.ending


# --- pure: payload arithmetic ----------------------------------------------------------------


def test_estimate_reference_numbers() -> None:
    # The reference: a 10,000,000-byte download was 10,008,484 B in 163 packets (IPv4).
    est = estimate_payload(Counters(163, 10_008_484), 4)
    assert est == PayloadEstimate(10_000_000, 10_008_484 - 163 * 80, 10_008_484 - 163 * 40)
    assert 10_000_000 in est and est.low < est.estimate < est.high
    # Measured here: 1 MiB over IPv4 in 24 packets; the pure-ACK direction.
    assert estimate_payload(Counters(24, 1_049_832), 4).estimate == MIB
    assert estimate_payload(Counters(23, 1_204), 4) == PayloadEstimate(0, 0, 1_204 - 23 * 40)
    # IPv6: 40 more bytes of IP header per packet.
    assert estimate_payload(Counters(26, 1_050_456), 6).estimate == MIB
    assert estimate_payload(Counters(3, 224), 6) == PayloadEstimate(0, 0, 224 - 3 * 60)


def test_estimate_edges() -> None:
    assert estimate_payload(Counters(0, 0), 4) == PayloadEstimate(0, 0, 0)
    # Without timestamps: 40-byte headers, SYN with 12 bytes of options.
    assert estimate_payload(Counters(3, 3 * 40 + 12 + 1000), 4, timestamps=False).estimate == 1000
    with pytest.raises(ValueError):
        estimate_payload(Counters(1, 60), 5)
    # The estimate is clamped into the bound.
    assert estimate_payload(Counters(2, 84), 4) == PayloadEstimate(0, 0, 4)


def test_seq_payload_wraps() -> None:
    assert seq_payload(1000, 1001) == 0
    assert seq_payload(1000, 1001 + MIB) == MIB
    isn = 0xFFFFFF00
    assert seq_payload(isn, (isn + 1 + 5000) % (1 << 32)) == 5000
    # 5 GiB + 5000: the counters' upper bound picks the right turn of the 32-bit counter.
    big = 5 * (1 << 30) + 5000
    fin = (isn + 1 + big) % (1 << 32)
    assert seq_payload(isn, fin) == big % (1 << 32)
    assert seq_payload(isn, fin, high=big + 200_000) == big
    assert seq_payload(isn, fin, high=big) == big
    assert seq_payload(isn, fin, high=10) == big % (1 << 32)  # a bound below the base: ignored


def test_seq_ledger_legs_and_nat() -> None:
    # DNAT to 10.9.9.9:2121 and SNAT to 203.0.113.1:61000: the forward hook sees
    # 192.0.2.5:4000 → 10.9.9.9:2121 and back.
    ct = CtEvent(
        CtKind.NEW,
        5,
        TAG,
        CtTuple(4, 6, "192.0.2.5", "198.51.100.1", 4000, 50000),
        CtTuple(4, 6, "10.9.9.9", "203.0.113.1", 2121, 61000),
    )
    orig, reply = legs(ct)
    assert orig == (("192.0.2.5", 4000), ("10.9.9.9", 2121)) and reply == (orig[1], orig[0])
    ledger = SeqLedger()
    ledger.syn(orig, 100)
    ledger.syn(reply, 7000)
    ledger.fin(reply, 7001 + 300)
    assert ledger.payloads(ct) == (None, 300) and ledger.finished(reply)
    ledger.fin(orig, 101)
    ledger.fin(orig, 101)  # a retransmitted FIN
    assert ledger.payloads(ct) == (0, 300) and len(ledger) == 2
    ledger.syn(orig, 555)  # the 4-tuple reused by a new connection
    assert ledger.payloads(ct) == (None, 300)
    ledger.forget(ct)
    assert len(ledger) == 0 and ledger.payloads(ct) == (None, None)


def test_seq_ledger_counts_a_reset_direction_exactly() -> None:
    """An RST carries the sender's next sequence number: a direction that ends with one is
    counted exactly; the connection still counts as reset. A FIN first wins over a later
    RST; an RST of a direction whose SYN was not seen (a refused connection) counts nothing."""
    ct = CtEvent(
        CtKind.NEW,
        6,
        TAG,
        CtTuple(4, 6, "192.0.2.5", "198.51.100.1", 4000, 50000),
        CtTuple(4, 6, "198.51.100.1", "192.0.2.5", 50000, 4000),
    )
    orig, reply = legs(ct)
    ledger = SeqLedger()
    ledger.syn(orig, 100)
    ledger.syn(reply, 7000)
    ledger.fin(reply, 7001 + 5000)
    assert not ledger.reset(ct)
    ledger.rst(orig, 101)  # no payload sent, then an abort (ABOR, a client that gives up)
    ledger.rst(orig, 999)  # a later RST of that direction does not move the count
    ledger.rst(reply, 9999)  # after its FIN: the FIN counts
    assert ledger.payloads(ct) == (0, 5000) and ledger.reset(ct)
    ledger.forget(ct)
    ledger.rst(reply, 42)
    assert ledger.payloads(ct) == (None, None) and len(ledger) == 1


def _tcp(seq: int, flags: int, payload: int, doff: int = 8) -> bytes:
    hdr = struct.pack(">HHIIBBHHH", 5001, 40000, seq, 0, doff << 4, flags, 0, 0, 0)
    return hdr + b"\x01\x01\x08\x0a" + b"\0" * (doff * 4 - 24)


def _ipv4(total: int, src: str = "10.0.0.1", dst: str = "10.0.0.2") -> bytes:
    a, b = socket.inet_aton(src), socket.inet_aton(dst)
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, a, b)


def test_parse_tcp_ipv4_and_ipv6() -> None:
    seg = _tcp(123456, 0x19, 0)
    v4 = _ipv4(20 + 32 + 24808, "198.51.100.10", "10.77.1.2")
    got = parse_tcp(4, v4 + seg)
    assert got is not None and got.fin and not got.syn and not got.rst
    assert (got.seq, got.length, got.leg) == (
        123456,
        24808,
        (("198.51.100.10", 5001), ("10.77.1.2", 40000)),
    )
    # IPv6 with a destination-options header in front of TCP.
    src, dst = (
        socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        socket.inet_pton(socket.AF_INET6, "2001:db8::2"),
    )
    ext = bytes([6, 0]) + b"\0" * 6
    v6 = struct.pack(">IHBB16s16s", 6 << 28, 8 + 32 + 10, 60, 64, src, dst) + ext
    got6 = parse_tcp(6, v6 + _tcp(1, 0x02, 0))
    assert got6 is not None and got6.syn and (got6.src, got6.length) == ("2001:db8::1", 10)
    jumbo = struct.pack(">IHBB16s16s", 6 << 28, 0, 6, 64, src, dst)
    big = parse_tcp(6, jumbo + _tcp(1, 0x11, 0))
    assert big is not None and big.fin and big.length is None  # a jumbogram: length unknown
    udp = bytearray(v4 + seg)
    udp[9] = 17
    assert parse_tcp(4, bytes(udp)) is None and parse_tcp(4, v4[:10]) is None


def test_record_and_rule_text() -> None:
    ledger = SeqLedger()
    syn = parse_tcp(4, _ipv4(52) + _tcp(0xFFFFFFFF, 0x02, 0))
    fin = parse_tcp(4, _ipv4(52 + 10) + _tcp(9, 0x11, 10))
    assert syn is not None and fin is not None
    record(ledger, [syn, fin])
    assert ledger.payload(syn.leg) == 19  # ISN 2**32-1: data 0..18 wraps through 0
    reset = SeqLedger()
    first = parse_tcp(4, _ipv4(52) + _tcp(0, 0x02, 0))
    rst = parse_tcp(4, _ipv4(52) + _tcp(41, 0x14, 0))  # RST|ACK after 40 bytes of payload
    assert first is not None and rst is not None and rst.rst
    record(reset, [first, rst])
    assert reset.payload(rst.leg) == 40
    rule = nflog_rule(TAG, TAG_MASK, NFLOG_GROUP)
    assert rule == (
        "ct mark & 0x80000000 == 0x80000000 tcp flags & (syn | fin | rst) != 0 "
        "log group 7 snaplen 128 queue-threshold 1"
    )
    with pytest.raises(ValueError):
        nflog_rule(1, 1, 70000)


def test_missing_namespace_is_an_error() -> None:
    with pytest.raises(KernelSetupError, match="no such network namespace"):
        in_netns("ftpalg-ct-does-not-exist", lambda: None)
    with pytest.raises(KernelSetupError, match="no such network namespace"):
        ConntrackWatcher(TAG, netns="../x")
    with pytest.raises(ValueError):
        ConntrackWatcher(1 << 32)


# --- lab: client — gateway — server ----------------------------------------------------------

C4, G4C, G4S, S4 = "10.77.1.2", "10.77.1.1", "198.51.100.1", "198.51.100.10"
C6, G6C, G6S, S6 = "2001:db8:77:1::2", "2001:db8:77:1::1", "2001:db8:77:2::1", "2001:db8:77:2::10"
PORT, PORT_UNTAGGED, PORT_LOSSY = 5001, 5002, 5003
LOSSY_TAG = 0x80005003


@dataclass(frozen=True)
class Topology:
    client: str
    gateway: str
    server: str


def _run(*cmd: str, stdin: str | None = None) -> None:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def _need_lab() -> None:
    if os.geteuid() != 0:
        unavailable("needs root for network namespaces")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            unavailable(f"{tool!r} is not installed")


RULESET = f"""
table inet ftpalg_ct_test {{
  chain tagging {{
    type filter hook forward priority filter; policy accept;
    tcp dport {PORT} ct state new ct mark set {TAG:#x}
    tcp dport {PORT_LOSSY} ct state new ct mark set {LOSSY_TAG:#x}
    {nflog_rule(TAG_MASK, TAG_MASK, NFLOG_GROUP)}
    ct mark {LOSSY_TAG:#x} meta length > 1000 numgen inc mod 8 == 0 counter drop
  }}
}}
"""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    """Three namespaces ``ftpalg-ct-<hex>-{c,g,s}``, veths, IPv4+IPv6 forwarding, the tag rules."""
    _need_lab()
    rid = secrets.token_hex(3)
    names = [f"ftpalg-ct-{rid}-{r}" for r in "cgs"]
    c, g, s = names
    created: list[str] = []
    try:
        for ns in names:
            _run("ip", "netns", "add", ns)
            created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # veth names are at most 15 bytes: fct<hex>c / fct<hex>s and their gateway ends.
        for side, ns, addr4, gw4, addr6, gw6 in (
            ("c", c, C4, G4C, C6, G6C),
            ("s", s, S4, G4S, S6, G6S),
        ):
            outer, inner = f"fct{rid}{side}", f"fct{rid}g{side}"
            _run(
                "ip",
                "link",
                "add",
                outer,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                inner,
                "netns",
                g,
            )
            for where, dev, a4, a6 in ((ns, outer, addr4, addr6), (g, inner, gw4, gw6)):
                _run("ip", "-n", where, "addr", "add", f"{a4}/24", "dev", dev)
                _run("ip", "-n", where, "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
                _run("ip", "-n", where, "link", "set", dev, "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", gw4)
            _run("ip", "-n", ns, "-6", "route", "add", "default", "via", gw6)
        forwarding = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        _run("ip", "netns", "exec", g, "sysctl", "-qw", *forwarding)
        _run("ip", "netns", "exec", g, "nft", "-f", "-", stdin=RULESET)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        unavailable(f"cannot build the conntrack lab: {exc}")
    try:
        ensure_conntrack_sysctls(g)
        assert conntrack_sysctls(g)["nf_conntrack_acct"] == 1
        yield Topology(c, g, s)
    finally:
        for ns in reversed(created):  # the veths go with their namespaces
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


# One side of a data connection. The side that sends first (the data sender; for 0 bytes the
# server, like an empty RETR) sends, half-closes, reads to EOF; the other reads to EOF first
# and closes afterwards, as FTP clients do. Prints its timestamps (CLOCK_MONOTONIC, the same
# in every namespace) as JSON.
PEER = r"""
import json, socket, sys, threading, time
role, family, host, port, send, first = sys.argv[1:7]
af = socket.AF_INET if family == "4" else socket.AF_INET6
if role == "server":
    srv = socket.socket(af)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
else:
    conn = socket.create_connection((host, int(port)))
out = {"local": conn.getsockname()[:2], "peer": conn.getpeername()[:2]}
def sender():
    conn.sendall(b"x" * int(send))
    conn.shutdown(socket.SHUT_WR)
    out["t_fin"] = time.monotonic()
th = threading.Thread(target=sender)
if first == "1":
    th.start()
received = 0
while data := conn.recv(1 << 16):
    received += len(data)
out["t_eof"] = time.monotonic()
if first == "1":
    th.join()
else:
    sender()
conn.close()
out["t_close"] = time.monotonic()
out["received"] = received
print(json.dumps(out), flush=True)
"""


@dataclass
class Transfer:
    family: int
    down: int
    up: int
    client: dict[str, Any]
    server: dict[str, Any]
    events: list[tuple[float, CtEvent]]  # (time read, event) of this connection
    ledger: SeqLedger
    final: CtEvent | None
    orig: CtTuple
    fin_logged: dict[int, bool]

    @property
    def data_dir(self) -> int:
        return 0 if self.up else 1  # an upload goes in the original direction

    def first(self, pred: Any) -> tuple[int, float, CtEvent]:
        for i, (t, ev) in enumerate(self.events):
            if pred(ev):
                return i, t, ev
        raise AssertionError(f"no such event in {[e for _, e in self.events]}")


async def _transfer(
    topo: Topology,
    watcher: ConntrackWatcher,
    log: SegmentLog | None,
    family: int,
    down: int,
    up: int,
    port: int = PORT,
) -> Transfer:
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, CtEvent]] = []
    ledger = SeqLedger()
    closed = asyncio.Event()

    fin_logged: dict[int, bool] = {}  # direction → its FIN was in the log when the event came

    def on_events() -> None:
        batch = watcher.read()
        now = time.monotonic()
        seen.extend((now, ev) for ev in batch)
        if log is not None:  # the FIN's log message precedes its event: drain it first
            record(ledger, log.read())
            for ev in batch:
                for d in (0, 1):
                    if ev.orig.dport == port and ev.fin_sent(d) and d not in fin_logged:
                        fin_logged[d] = ledger.finished(legs(ev)[d])
        if any(ev.orig.dport == port and ev.tcp_state is TcpState.TIME_WAIT for ev in batch):
            closed.set()

    def on_segments() -> None:
        assert log is not None
        record(ledger, log.read())

    loop.add_reader(watcher.fileno(), on_events)
    if log is not None:
        loop.add_reader(log.fileno(), on_segments)
    py = [sys.executable, "-c", PEER]
    s_addr, c_addr = (S4, C4) if family == 4 else (S6, C6)
    try:
        s_args = ["server", str(family), s_addr, str(port), str(down), "0" if up else "1"]
        server = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", topo.server, *py, *s_args, stdout=subprocess.PIPE
        )
        assert server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), 20) == b"ready\n"
        c_args = ["client", str(family), s_addr, str(port), str(up), "1" if up else "0"]
        client = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", topo.client, *py, *c_args, stdout=subprocess.PIPE
        )
        outs = await asyncio.wait_for(
            asyncio.gather(client.communicate(), server.communicate()), 60
        )
        c_out, s_out = (json.loads(out.decode().splitlines()[-1]) for out, _ in outs)
        if port != PORT_UNTAGGED:
            await asyncio.wait_for(closed.wait(), 10)
        else:
            await asyncio.sleep(0.3)  # nothing to wait for: give stray events time to show
    finally:
        loop.remove_reader(watcher.fileno())
        if log is not None:
            loop.remove_reader(log.fileno())
    if log is not None:
        record(ledger, log.read())  # whatever came after the last callback
    orig = CtTuple(family, 6, c_addr, s_addr, c_out["local"][1], port)
    mine = [(t, ev) for t, ev in seen if ev.orig == orig]
    final = watcher.query(orig)
    return Transfer(family, down, up, c_out, s_out, mine, ledger, final, orig, fin_logged)


def _retransmissions(topo: Topology) -> int:
    """TCP segments retransmitted so far by the client and the server (``/proc/net/snmp``)."""
    total = 0
    for ns in (topo.client, topo.server):
        snmp = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names, values = (line.split() for line in snmp.splitlines() if line.startswith("Tcp:"))
        total += int(values[names.index("RetransSegs")])
    return total


CASES = [(4, MIB, 0), (4, 0, MIB), (4, 0, 0), (6, MIB, 0), (6, 0, MIB), (6, 0, 0)]


@pytest.mark.lab
@pytest.mark.parametrize(
    ("family", "down", "up"), CASES, ids=[f"v{f}-down{d}-up{u}" for f, d, u in CASES]
)
async def test_transfer_events_and_bytes(topo: Topology, family: int, down: int, up: int) -> None:
    with (
        ConntrackWatcher(TAG, TAG_MASK, netns=topo.gateway) as watcher,
        SegmentLog(NFLOG_GROUP, netns=topo.gateway) as log,
    ):
        retrans_before = _retransmissions(topo)
        xfer = await _transfer(topo, watcher, log, family, down, up)
        retransmitted = _retransmissions(topo) - retrans_before
    assert xfer.client["received"] == down and xfer.server["received"] == up

    # Start: the first event of the connection is NEW, with the tag and both tuples.
    new = xfer.events[0][1]
    assert new.kind is CtKind.NEW and new.mark == TAG and new.tcp_state is TcpState.SYN_SENT
    assert new.reply == xfer.orig.reversed() and new.ct_id != 0
    assert all(ev.ct_id == new.ct_id and ev.mark == TAG for _, ev in xfer.events)
    # End of the data direction, then of the connection; no DESTROY needed (it comes 10+ s later).
    i_end, t_end, _ = xfer.first(lambda ev: ev.fin_sent(xfer.data_dir))
    i_both, t_both, _ = xfer.first(lambda ev: ev.tcp_state is TcpState.TIME_WAIT)
    i_est, _, _ = xfer.first(lambda ev: ev.tcp_state is TcpState.ESTABLISHED)
    assert 0 < i_est < i_end <= i_both
    assert all(ev.kind is CtKind.UPDATE for _, ev in xfer.events[1:])
    receiver = xfer.client if xfer.data_dir == 1 else xfer.server
    timing = {
        "case": f"v{family} down={down} up={up}",
        "data_end_after_receiver_eof_ms": round((t_end - receiver["t_eof"]) * 1000, 2),
        "time_wait_after_receiver_close_ms": round((t_both - receiver["t_close"]) * 1000, 2),
        "time_wait_after_last_close_ms": round(
            (t_both - max(xfer.client["t_close"], xfer.server["t_close"])) * 1000, 2
        ),
        "events": [ev.tcp_state.name if ev.tcp_state else ev.kind.value for _, ev in xfer.events],
    }
    print("conntrack-timing", json.dumps(timing))

    # Bytes: the counters by query, the bound, and the exact NFLOG numbers.
    final = xfer.final
    assert final is not None and final.ct_id == new.ct_id and final.kind is CtKind.SNAPSHOT
    assert final.orig_counters is not None and final.reply_counters is not None
    truth = (up, down)
    estimates = [estimate_payload(c, family) for c in (final.orig_counters, final.reply_counters)]
    for est, real in zip(estimates, truth, strict=True):
        # The upper bound always holds; the lower one only when nothing was sent twice (even
        # this loss-free lab reorders now and then on a busy machine: fast retransmits).
        assert real <= est.high and (retransmitted or est.low <= real), (est, real)
    got = {
        "case": timing["case"],
        "estimate": [e.estimate for e in estimates],
        "truth": truth,
        "retransmitted_segments": retransmitted,
    }
    print("conntrack-bytes", json.dumps(got))
    highs = (estimates[0].high, estimates[1].high)
    assert xfer.ledger.payloads(final, highs) == truth
    assert xfer.fin_logged == {0: True, 1: True}  # usable the moment the event is read


@pytest.mark.lab
async def test_lost_packets_exact_despite_retransmissions(topo: Topology) -> None:
    """Every 8th large packet dropped after conntrack counted it: counters overcount, the
    upper bound holds, the sequence numbers stay exact."""
    size = 8 * MIB
    with (
        ConntrackWatcher(TAG_MASK, TAG_MASK, netns=topo.gateway) as watcher,
        SegmentLog(NFLOG_GROUP, netns=topo.gateway) as log,
    ):
        xfer = await _transfer(topo, watcher, log, 4, size, 0, port=PORT_LOSSY)
    assert xfer.client["received"] == size
    nft = ["ip", "netns", "exec", topo.gateway, "nft", "list", "table", "inet", "ftpalg_ct_test"]
    rules = subprocess.run(nft, capture_output=True, text=True, check=True).stdout
    dropped = int(rules.split("counter packets ")[1].split()[0])
    assert dropped > 0
    final = xfer.final
    assert final is not None and final.reply_counters is not None and final.mark == LOSSY_TAG
    est = estimate_payload(final.reply_counters, 4)
    assert size <= est.high and est.estimate >= size
    exact = xfer.ledger.payloads(final, (None, est.high))
    report = {
        "dropped_packets": dropped,
        "estimate_minus_truth": est.estimate - size,
        "low_minus_truth": est.low - size,
        "exact": exact,
    }
    print("conntrack-lossy", json.dumps(report))
    assert exact == (0, size)


@pytest.mark.lab
async def test_untagged_connections_are_not_reported(topo: Topology) -> None:
    with ConntrackWatcher(TAG_MASK, TAG_MASK, netns=topo.gateway) as watcher:
        xfer = await _transfer(topo, watcher, None, 4, 1000, 0, port=PORT_UNTAGGED)
        assert xfer.client["received"] == 1000
        assert xfer.events == [] and watcher.read() == []
        assert xfer.final is not None and xfer.final.mark == 0  # it exists, untagged
        missing = CtTuple(4, 6, C4, S4, 1, PORT)
        assert watcher.query(missing) is None


@pytest.mark.lab
async def test_real_messages_decode_like_pyroute2(topo: Topology) -> None:
    raw = netlink_socket(topo.gateway, 1 << 22)
    raw.bind((0, 0x7))
    raw.setblocking(False)
    try:
        with ConntrackWatcher(TAG, netns=topo.gateway) as watcher:
            xfer = await _transfer(topo, watcher, None, 6, 5000, 0)
        checked = 0
        while True:
            try:
                data = raw.recv(1 << 16)
            except BlockingIOError:
                break
            for mtype, flags, _seq, start, end in messages(data):
                kind = event_kind(mtype, flags)
                if kind is not None and data[start] in (socket.AF_INET, socket.AF_INET6):
                    _same_as_pyroute2(data[start - 16 : end], decode(data, start, end, kind))
                    checked += 1
        assert checked >= len(xfer.events) >= 5
    finally:
        raw.close()


# --- lab: a namespace of its own for ctnetlink-made entries ---------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    _need_lab()
    name = f"ftpalg-ct-{secrets.token_hex(3)}-x"
    try:
        _run("ip", "netns", "add", name)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        unavailable(f"cannot create a namespace: {exc}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _udp(i: int) -> CtTuple:
    return CtTuple(4, 17, "10.88.0.1", "10.88.0.2", 10000 + i, 53)


def _add_entries(ns: str, marks: list[int], first: int = 0) -> list[CtTuple]:
    """Create UDP conntracks through ctnetlink (each one a NEW event for listeners)."""
    sock = netlink_socket(ns, 1 << 20)
    sock.bind((0, 0))
    sock.settimeout(5)
    made = []
    try:
        for i, mark in enumerate(marks, first):
            t = _udp(i)
            body = encode_tuple(CTA_TUPLE_ORIG, t) + encode_tuple(CTA_TUPLE_REPLY, t.reversed())
            body += _be32(CTA_TIMEOUT, 300) + (_be32(CTA_MARK, mark) if mark else b"")
            flags = NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
            sock.send(request(IPCTNL_MSG_CT_NEW, flags, i + 1, socket.AF_INET, body))
            data = sock.recv(1 << 16)
            [(mtype, _f, _s, start, _e)] = list(messages(data))
            assert mtype == NLMSG_ERROR and error_code(data, start) == 0
            made.append(t)
    finally:
        sock.close()
    return made


@pytest.mark.lab
def test_overflow_is_reported_and_dump_resyncs(netns: str) -> None:
    watcher = ConntrackWatcher(TAG, TAG_MASK, netns=netns, rcvbuf=4096)
    try:
        tagged = _add_entries(netns, [TAG] * 300)
        _add_entries(netns, [0x1234] * 20 + [0] * 20, first=1000)
        with pytest.raises(ConntrackOverflow) as info:
            watcher.read()
        lost = info.value.events
        assert 0 < len(lost) < 300 and watcher.overflows >= 1
        assert all(ev.kind is CtKind.NEW and ev.mark == TAG and ev.orig.proto == 17 for ev in lost)
        assert watcher.read() == []  # drained: the error is reported once
        dump = watcher.dump()
        assert sorted(ev.orig.sport for ev in dump) == sorted(t.sport for t in tagged)
        assert all(ev.kind is CtKind.SNAPSHOT and ev.mark == TAG for ev in dump)
        assert len(watcher.table.dump(0x1234)) == 20
        assert len(watcher.table.dump(0, 0)) == 340
        got = watcher.query(tagged[7])
        assert got is not None and got.orig == tagged[7] and got.mark == TAG
    finally:
        watcher.close()


@pytest.mark.lab
def test_kernel_filter_drops_untagged_events_before_the_buffer(netns: str) -> None:
    filtered = ConntrackWatcher(TAG, TAG_MASK, netns=netns, rcvbuf=4096)
    unfiltered = ConntrackWatcher(TAG, TAG_MASK, netns=netns, rcvbuf=4096, kernel_filter=False)
    everything = ConntrackWatcher(0, 0, netns=netns)
    try:
        _add_entries(netns, [0x1234] * 150 + [0] * 150)
        assert filtered.read() == []  # nothing queued: no overflow
        with pytest.raises(ConntrackOverflow) as info:
            unfiltered.read()  # the same events filled its buffer
        assert info.value.events == []
        assert len(everything.read()) == 300
        made = _add_entries(netns, [TAG, TAG | 0x0F000000, 0x7FFFFFFF], first=500)
        assert [ev.orig for ev in filtered.read()] == made[:2]
        assert [ev.orig for ev in unfiltered.read()] == made[:2]
    finally:
        for w in (filtered, unfiltered, everything):
            w.close()


def _write_sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/net/netfilter/{name}", "w") as f:
        f.write(value)


@pytest.mark.lab
def test_sysctls(netns: str) -> None:
    # A fresh namespace has the module defaults (here: events 2, acct 0).
    assert conntrack_sysctls(netns)["nf_conntrack_events"] in (0, 1, 2)
    in_netns(netns, lambda: _write_sysctl("nf_conntrack_acct", "0"))
    in_netns(netns, lambda: _write_sysctl("nf_conntrack_events", "2"))
    assert ensure_conntrack_sysctls(netns) == {"nf_conntrack_acct": (0, 1)}
    assert ensure_conntrack_sysctls(netns) == {}
    in_netns(netns, lambda: _write_sysctl("nf_conntrack_events", "0"))
    assert ensure_conntrack_sysctls(netns) == {"nf_conntrack_events": (0, 1)}
    assert conntrack_sysctls(netns) == {"nf_conntrack_events": 1, "nf_conntrack_acct": 1}
    assert conntrack_sysctls(None)  # the caller's own namespace works too
