"""A tiny pure-Python reader for classic pcap files (what `tcpdump -w` writes): TCP only.

How this works. The 24-byte global header gives the byte order (magic a1b2c3d4, or a1b23c4d
for nanosecond stamps) and the link type; each record is a 16-byte header plus the captured
bytes. Ethernet (1), Linux cooked SLL (113) and SLL2 (276), and raw IP (101) are unwrapped to
the IP packet; IPv4 and IPv6 (TCP directly after the fixed header) are parsed down to the TCP
header. Everything else (ARP, ICMP, UDP, extension headers) is skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_LINK_OFFSET = {1: 14, 113: 16, 276: 20, 101: 0}
_ETHERTYPE_AT = {1: 12, 113: 14, 276: 0}


@dataclass(frozen=True)
class TcpPacket:
    ts: float
    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


def read_pcap(path: Path) -> list[TcpPacket]:
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (pcapng is not supported)")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    if linktype not in _LINK_OFFSET:
        raise ValueError(f"{path}: unsupported link type {linktype}")
    packets = []
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        ts = sec + frac / (1e9 if nano else 1e6)
        packet = _parse_frame(frame, linktype, ts)
        if packet is not None:
            packets.append(packet)
    return packets


def _parse_frame(frame: bytes, linktype: int, ts: float) -> TcpPacket | None:
    offset = _LINK_OFFSET[linktype]
    if len(frame) < offset + 20:
        return None
    ip = frame[offset:]
    if linktype in _ETHERTYPE_AT:
        at = _ETHERTYPE_AT[linktype]
        (ethertype,) = struct.unpack("!H", frame[at : at + 2])
        if ethertype == 0x8100:  # one VLAN tag
            ip = ip[4:]
    version = ip[0] >> 4
    if version == 4:
        ihl = (ip[0] & 0x0F) * 4
        (total,) = struct.unpack("!H", ip[2:4])
        if ip[9] != 6:
            return None
        src, dst = ip_address(ip[12:16]), ip_address(ip[16:20])
        segment = ip[ihl:total]
    elif version == 6 and len(ip) >= 40:
        (plen,) = struct.unpack("!H", ip[4:6])
        if ip[6] != 6:
            return None
        src, dst = ip_address(ip[8:24]), ip_address(ip[24:40])
        segment = ip[40 : 40 + plen]
    else:
        return None
    if len(segment) < 20:
        return None
    sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", segment[:14])
    header = (off_flags >> 12) * 4
    return TcpPacket(ts, src, dst, sport, dport, seq, ack, off_flags & 0x3F, segment[header:])
