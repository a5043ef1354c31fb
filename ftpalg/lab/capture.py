"""Read the FTP commands that crossed a lab interface, from a tcpdump capture.

How this works: `start_capture()` runs `tcpdump -i IFACE -U -w FILE 'tcp port 21'` in a lab
namespace (`--immediate-mode` and `-U`: each packet is in the file at once, not after libpcap's
1 s buffer timeout; `-Z root` so it can
write into our private directory). `Capture.lines()` parses the pcap file with
`parse_pcap()`, a small pure reader: the pcap record headers (either byte order, micro- or
nanosecond magic), Ethernet (linktype 1, with optional 802.1Q tags), IPv4 (header options,
total length trims Ethernet padding) or IPv6 (fixed header, TCP as next header), then the TCP
payload. Each TCP direction gets its own byte stream (a retransmitted segment, same sequence
number and length, is skipped), which is split into lines. `ftp_lines()` keeps the lines
whose address fields an FTP ALG rewrites: client `PORT`/`EPRT` (case-insensitive prefix) and
server `227 `/`229 `. The lab uses this to show what the kernel's `nf_nat_ftp` rewrote:
the gateway's inside interface shows the client's side, the outside interface the server's.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftpalg.lab.netns import Lab, LabError, Role, stop_process, wait_until

_MAGIC = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\x3c\x4d": ">",
}
_ETH_IPV4, _ETH_IPV6, _ETH_VLAN = 0x0800, 0x86DD, (0x8100, 0x88A8)
_TCP = 6
REWRITTEN = (b"PORT", b"EPRT")


@dataclass(frozen=True)
class Segment:
    """One TCP segment with payload: the flow (src, sport, dst, dport), seq and bytes."""

    flow: tuple[str, int, str, int]
    seq: int
    payload: bytes


def _ip_payload(frame: bytes) -> tuple[str, str, bytes] | None:
    """(src, dst, TCP segment) of an Ethernet frame, or None if it is not TCP over IP."""
    offset, ethertype = 14, int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
    while ethertype in _ETH_VLAN and len(frame) >= offset + 4:
        ethertype = int.from_bytes(frame[offset + 2 : offset + 4], "big")
        offset += 4
    ip = frame[offset:]
    if ethertype == _ETH_IPV4 and len(ip) >= 20 and ip[9] == _TCP:
        ihl, total = (ip[0] & 15) * 4, int.from_bytes(ip[2:4], "big")
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        return src, dst, ip[ihl:total]
    if ethertype == _ETH_IPV6 and len(ip) >= 40 and ip[6] == _TCP:
        length = int.from_bytes(ip[4:6], "big")
        return ip[8:24].hex(":", 2), ip[24:40].hex(":", 2), ip[40 : 40 + length]
    return None


def parse_pcap(data: bytes) -> list[Segment]:
    """TCP segments with a payload, in capture order (pure; a truncated tail is ignored)."""
    if len(data) < 24 or data[:4] not in _MAGIC:
        return []
    order = _MAGIC[data[:4]]
    if struct.unpack(order + "I", data[20:24])[0] != 1:  # only Ethernet (what veths give)
        return []
    out: list[Segment] = []
    pos = 24
    while pos + 16 <= len(data):
        incl = struct.unpack(order + "I", data[pos + 8 : pos + 12])[0]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if len(frame) < incl:
            break
        parsed = _ip_payload(frame)
        if parsed is None or len(parsed[2]) < 20:
            continue
        src, dst, tcp = parsed
        sport, dport, seq = struct.unpack(">HHI", tcp[:8])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            out.append(Segment((src, sport, dst, dport), seq, payload))
    return out


def ftp_lines(segments: list[Segment], control_port: int = 21) -> list[tuple[str, bytes]]:
    """("client"|"server", line) for each PORT/EPRT from a client and 227/229 from a server."""
    buffers: dict[tuple[str, int, str, int], bytes] = {}
    seen: set[tuple[tuple[str, int, str, int], int, int]] = set()
    out: list[tuple[str, bytes]] = []
    for seg in segments:
        key = (seg.flow, seg.seq, len(seg.payload))
        if key in seen:
            continue
        seen.add(key)
        data = buffers.get(seg.flow, b"") + seg.payload
        *lines, rest = data.split(b"\n")
        buffers[seg.flow] = rest
        sender = "client" if seg.flow[3] == control_port else "server"
        for line in lines:
            line = line.rstrip(b"\r")
            if (sender == "client" and line[:4].upper() in REWRITTEN) or (
                sender == "server" and line[:4] in (b"227 ", b"229 ")
            ):
                out.append((sender, line))
    return out


class Capture:
    """A running tcpdump writing a pcap file; `lines()` reads what it captured so far."""

    def __init__(self, proc: subprocess.Popen[Any], path: Path, log: Path) -> None:
        self.proc = proc
        self.path = path
        self.log = log

    def lines(self) -> list[tuple[str, bytes]]:
        try:
            data = self.path.read_bytes()
        except OSError:
            return []
        return ftp_lines(parse_pcap(data))

    def stop(self) -> None:
        """Stop tcpdump and delete its files."""
        stop_process(self.proc)
        shutil.rmtree(self.path.parent, ignore_errors=True)


def start_capture(lab: Lab, role: Role, iface: str, timeout: float = 10.0) -> Capture:
    """tcpdump on `iface` in `role`'s namespace for tcp port 21; stopped when the lab closes."""
    work = Path(tempfile.mkdtemp(prefix=f"{lab.id}-tcpdump-"))
    path, log = work / f"{iface}.pcap", work / f"{iface}.log"
    argv = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", "0", "-Z", "root"]
    argv += ["-w", str(path)]
    with log.open("wb") as err:
        proc = lab.popen(role, [*argv, "tcp port 21"], stdout=subprocess.DEVNULL, stderr=err)
    capture = Capture(proc, path, log)
    lab.on_close(capture.stop)
    if not wait_until(lambda: "listening on" in log.read_text(errors="replace"), timeout):
        capture.stop()
        tail = log.read_text(errors="replace").strip()[-500:]
        raise LabError(f"tcpdump on {iface} did not start: {tail or 'no output'}")
    return capture
