"""Exact payload bytes: the SYN and FIN segments of tagged conntracks through NFLOG.

How this works: one nft rule (:func:`nflog_rule`, in the ``forward`` hook, after the rule
that sets the tag) sends every SYN, SYN-ACK, FIN and RST of a tagged conntrack to
nfnetlink_log group ``G``. :class:`SegmentLog` binds that group (``NFULNL_CFG_CMD_BIND``),
asks for the first ``copy_range`` bytes of each packet (IP + TCP headers) and for one message
per packet (``NFULA_CFG_QTHRESH`` = 1; the default batches for up to a second). ``read()``
returns :class:`Segment` s; :func:`record` enters them in a ``conntrack_payload.SeqLedger``,
keyed by (sender, receiver) as the forward hook sees them (``conntrack_payload.legs`` maps a
conntrack's tuples to the same keys, NAT included). The ledger gives the exact payload of a
direction once its SYN and FIN have passed: FIN seq − ISN − 1.

Subtle rules:

- Only the forward hook: there DNAT is done and SNAT not yet, which is what ``legs``
  assumes. Put the rule after the tagging rule in the same chain, or in a forward base chain
  of a later priority (a packet runs through every base chain of the hook).
- Ordering: for one packet, the log message is sent from the forward hook, the conntrack
  event later (at confirmation, in postrouting). So when an event says a FIN passed, drain
  the log (``read()``) before asking the ledger: the FIN's message is already queued.
- One socket per group and namespace: binding a group that another socket holds fails
  (``EBUSY``). Closing the socket releases it.
- A GRO/GSO packet can carry the FIN behind data (seen: FIN on a 24,808-byte packet): the
  FIN's number is ``seq + payload length``, the length taken from the IP length field; an
  IPv6 jumbogram (BIG TCP, ``payload_len`` 0) gives ``length=None`` and no exact value.
- A direction that ends with an RST without a FIN is exact too: an RST carries the sender's
  next sequence number (``snd_nxt``: everything it sent, delivered or not). A direction whose
  SYN or end was lost (``ENOBUFS``, :class:`SegmentsLost`), or a refused connection's RST
  (no SYN of that direction), has no exact value: fall back to ``estimate_payload``.
- ``NFULNL_CFG_F_CONNTRACK`` (the conntrack inside each message: ct id, mark, counters) is
  asked for and used when the kernel has ``CONFIG_NETFILTER_NETLINK_GLUE_CT``; this 6.18
  kernel does not (``EOPNOTSUPP``), so nothing here depends on it (``with_conntrack``).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import socket
import struct
from dataclasses import dataclass

from ftpalg.kernel.conntrack_netns import netlink_socket
from ftpalg.kernel.conntrack_payload import Leg, SeqLedger
from ftpalg.kernel.conntrack_types import CtEvent, CtKind
from ftpalg.kernel.conntrack_wire import (
    NLM_F_ACK,
    NLMSG_ERROR,
    WireError,
    attr,
    attrs,
    decode_attrs,
    error_code,
    messages,
    request,
)
from ftpalg.kernel.errors import KernelSetupError

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT = 1, 2, 3, 4
NFULA_CFG_QTHRESH, NFULA_CFG_FLAGS = 5, 6
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
_CT_FLAG = 0x4  # NFULNL_CFG_F_CONNTRACK
NFULA_PAYLOAD, NFULA_CT, NFULA_CT_INFO = 9, 18, 19
IP_CT_IS_REPLY = 3  # ctinfo >= 3: the packet goes in the reply direction
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
_IPPROTO_TCP = 6
_V6_EXT = {0: 8, 43: 8, 60: 8}  # hop-by-hop, routing, destination options: (len + 1) * 8
_AF: dict[int, int] = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}
_TCP = struct.Struct(">HHII")  # sport, dport, seq, ack


@dataclass(frozen=True, slots=True)
class Segment:
    """A logged TCP segment of a tagged conntrack, addresses as the forward hook saw them.

    ``length``: TCP payload bytes in the packet (None when the IP length field cannot tell).
    ``ct``: the conntrack as of this packet (``kind`` SNAPSHOT, with counters) and
    ``direction`` (0 original, 1 reply), only when the kernel has
    ``CONFIG_NETFILTER_NETLINK_GLUE_CT`` (6.18 here does not).
    """

    family: int
    src: str
    sport: int
    dst: str
    dport: int
    flags: int
    seq: int
    length: int | None
    ct: CtEvent | None = None
    direction: int | None = None

    @property
    def leg(self) -> Leg:
        """(sender, receiver): the key of this direction in a ``SeqLedger``."""
        return (self.src, self.sport), (self.dst, self.dport)

    @property
    def syn(self) -> bool:
        return bool(self.flags & TCP_SYN)

    @property
    def fin(self) -> bool:
        return bool(self.flags & TCP_FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & TCP_RST)


class SegmentsLost(Exception):
    """The kernel dropped log messages (``ENOBUFS``); ``segments`` were still read."""

    def __init__(self, segments: list[Segment]) -> None:
        super().__init__(f"NFLOG messages lost (ENOBUFS); {len(segments)} read")
        self.segments = segments


def nflog_rule(mark: int, mask: int, group: int, snaplen: int = 128) -> str:
    """The nft rule (for a ``forward`` chain) that logs SYN/FIN/RST of tagged conntracks."""
    if not 0 <= group <= 0xFFFF:
        raise ValueError(f"NFLOG group must be 0..65535, got {group}")
    return (
        f"ct mark & {mask:#x} == {mark & mask:#x} tcp flags & (syn | fin | rst) != 0 "
        f"log group {group} snaplen {snaplen} queue-threshold 1"
    )


def parse_tcp(family: int, pkt: bytes) -> Segment | None:
    """The TCP segment in an IP packet's first bytes (``family`` 4 or 6); None if not TCP."""
    if family == 4:
        if len(pkt) < 20:
            return None
        ihl, proto, total = (pkt[0] & 0x0F) * 4, pkt[9], struct.unpack_from(">H", pkt, 2)[0]
        if proto != _IPPROTO_TCP or len(pkt) < ihl + 20:
            return None
        ip_len: int | None = total - ihl if total else None
        off, src, dst = ihl, pkt[12:16], pkt[16:20]
    else:
        if len(pkt) < 40:
            return None
        plen, nxt, off = struct.unpack_from(">H", pkt, 4)[0], pkt[6], 40
        src, dst = pkt[8:24], pkt[24:40]
        while nxt in _V6_EXT and len(pkt) >= off + 8:
            nxt, off = pkt[off], off + (pkt[off + 1] + 1) * 8
        if nxt != _IPPROTO_TCP or len(pkt) < off + 20:
            return None
        ip_len = plen - (off - 40) if plen else None
    sport, dport, seq, _ack = _TCP.unpack_from(pkt, off)
    doff, flags = (pkt[off + 12] >> 4) * 4, pkt[off + 13]
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    return Segment(
        family,
        socket.inet_ntop(af, src),
        sport,
        socket.inet_ntop(af, dst),
        dport,
        flags,
        seq,
        ip_len - doff if ip_len is not None else None,
    )


def record(ledger: SeqLedger, segments: list[Segment]) -> None:
    """Enter the SYN/FIN sequence numbers of ``segments`` in ``ledger``."""
    for seg in segments:
        if seg.syn:
            ledger.syn(seg.leg, seg.seq)
        if seg.fin and seg.length is not None:
            ledger.fin(seg.leg, (seg.seq + seg.length) & 0xFFFFFFFF)
        if seg.rst and not seg.syn:
            ledger.rst(seg.leg, seg.seq)


class SegmentLog:
    """The NFLOG group ``group``: segments of the conntracks that :func:`nflog_rule` logs."""

    def __init__(
        self,
        group: int,
        *,
        netns: str | None = None,
        copy_range: int = 128,
        rcvbuf: int = 4 << 20,
        max_messages: int = 4096,
    ) -> None:
        self.group, self.max_messages, self.overflows = group, max_messages, 0
        self._seq = itertools.count(1)
        self._sock = sock = netlink_socket(netns, rcvbuf)
        try:
            sock.bind((0, 0))
            sock.settimeout(2.0)
            self._configure(attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
            mode = (
                attr(NFULA_CFG_MODE, struct.pack(">IBB", copy_range, NFULNL_COPY_PACKET, 0)),
                attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)),
                attr(NFULA_CFG_TIMEOUT, struct.pack(">I", 1)),
            )
            try:
                self._configure(*mode, attr(NFULA_CFG_FLAGS, struct.pack(">H", _CT_FLAG)))
                self.with_conntrack = True
            except OSError as exc:  # no CONFIG_NETFILTER_NETLINK_GLUE_CT
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                self._configure(*mode)
                self.with_conntrack = False
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise KernelSetupError(f"cannot bind NFLOG group {group}: {exc}") from exc

    def _configure(self, *body: bytes) -> None:
        seq = next(self._seq)
        req = request(
            NFULNL_MSG_CONFIG, NLM_F_ACK, seq, 0, b"".join(body), NFNL_SUBSYS_ULOG, self.group
        )
        self._sock.send(req)
        while True:
            data = self._sock.recv(1 << 16)
            for mtype, _flags, mseq, start, _end in messages(data):
                if mtype == NLMSG_ERROR and mseq == seq:
                    err = -error_code(data, start)
                    if err:
                        raise OSError(err, os.strerror(err))
                    return

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SegmentLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def read(self) -> list[Segment]:
        """Every queued segment (up to ``max_messages``); :class:`SegmentsLost` on ENOBUFS."""
        out: list[Segment] = []
        lost = False
        for _ in range(self.max_messages):
            try:
                data = self._sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost, self.overflows = True, self.overflows + 1
                continue
            for mtype, _flags, _seq, start, end in messages(data):
                if mtype != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                    continue
                seg = decode_segment(data, start, end)
                if seg is not None:
                    out.append(seg)
        if lost:
            raise SegmentsLost(out)
        return out


def decode_segment(buf: bytes, start: int, end: int) -> Segment | None:
    """The :class:`Segment` of an ``NFULNL_MSG_PACKET`` payload; None if it is not TCP."""
    family = _AF.get(buf[start])
    if family is None:
        return None
    a = attrs(buf, start + 4, end)
    if NFULA_PAYLOAD not in a:
        return None
    s, e = a[NFULA_PAYLOAD]
    seg = parse_tcp(family, buf[s:e])
    if seg is None or NFULA_CT not in a or NFULA_CT_INFO not in a:
        return seg
    try:
        ct = decode_attrs(buf, *a[NFULA_CT], family, CtKind.SNAPSHOT)
    except WireError:
        return seg
    info = struct.unpack_from(">I", buf, a[NFULA_CT_INFO][0])[0]
    return dataclasses.replace(seg, ct=ct, direction=1 if info >= IP_CT_IS_REPLY else 0)


__all__ = [
    "Segment",
    "SegmentLog",
    "SegmentsLost",
    "decode_segment",
    "nflog_rule",
    "parse_tcp",
    "record",
]
