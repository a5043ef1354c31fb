"""The parts of the differential suite that need no lab: corpus, templates, verdicts, the
pcap reader and the ledger derivation (on a synthetic capture)."""

from __future__ import annotations

import dataclasses
import struct
from collections import Counter
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from ftpalg.lab.addresses import LabAddresses
from ftpalg.parity.cases import CLASSES, DEVIATION, MIRROR, STALL, render
from ftpalg.parity.corpus import CASES
from ftpalg.parity.pcap import ACK, SYN, TcpPacket, read_pcap
from ftpalg.parity.report import escape
from ftpalg.parity.seqcheck import compare
from ftpalg.parity.verdict import Observation, judge

ADDR = LabAddresses.for_subnet(123)


def test_corpus_size_and_classes() -> None:
    counts = Counter(c.cls for c in CASES)
    assert len(CASES) >= 80 and set(counts) == set(CLASSES)
    assert counts[MIRROR] >= 40 and counts[DEVIATION] >= 20 and counts[STALL] >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert sum(c.v6 for c in CASES) >= 15 and sum(c.config == "low" for c in CASES) >= 3


def test_data_ports_never_clash_on_the_kernel_path() -> None:
    seen: set[tuple[str, bool, int]] = set()
    for case in render(CASES, ADDR):
        key = (case.side, case.v6, case.port)
        assert key not in seen, case.id
        seen.add(key)


def test_templates_use_the_lab_addresses() -> None:
    cases = {c.id: c for c in render(CASES, ADDR)}
    basic = cases["port-basic"]
    assert basic.segments == (f"PORT 10,123,1,2,{basic.port >> 8},{basic.port & 255}\r\n".encode(),)
    assert basic.kernel.text == basic.segments[0].replace(b"10,123,1,2", b"203,0,113,1")
    v6 = cases["v6-eprt-basic"]
    assert b"|2|2001:0db8:0002:0000:0000:0000:0000:0001|" in v6.kernel.text
    assert cases["pasv-split-22"].segments[0] == b"22"
    assert cases["epsv-basic"].trigger == b"EPSV\r\n" and cases["pasv-basic"].trigger == b"PASV\r\n"


def test_verdicts() -> None:
    cases = {c.id: c for c in render(CASES, ADDR)}
    c = cases["port-basic"]
    good = Observation(c.kernel.text, b"200 ok\r\n")
    assert judge(c, good, good).verdict == "ok"
    assert judge(c, good, Observation(c.data, b"200 ok\r\n")).verdict == "MISMATCH"
    assert judge(c, Observation(b"", b""), good).verdict == "KERNEL-UNEXPECTED"
    s = cases["port-two-spaces"]
    refused = Observation(b"", b"501 Syntax error.\r\n")
    assert judge(s, Observation(b"", b""), refused).verdict == "ok"
    assert judge(s, Observation(b"", b""), Observation(s.data, b"200 ok\r\n")).verdict != "ok"
    x = dataclasses.replace(cases["v6-eprt-group-zeros"], xfail="a known difference")
    assert judge(x, Observation(x.kernel.text, b"200 ok\r\n"), refused).verdict == "XFAIL"
    same = Observation(x.kernel.text, b"200 ok\r\n")
    assert judge(x, same, same).verdict == "XPASS"
    assert escape(b"A|\r\n\x00`") == "A|\\r\\n\\x00\\x60"


def _pcap(path: Path, packets: list[TcpPacket]) -> None:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for p in packets:
        tcp = (
            struct.pack(
                "!HHIIHHHH", p.sport, p.dport, p.seq, p.ack, (5 << 12) | p.flags, 65535, 0, 0
            )
            + p.payload
        )
        ip = (
            struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, p.src.packed, p.dst.packed
            )
            + tcp
        )
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        sec, usec = int(p.ts), int((p.ts % 1) * 1e6)
        out += struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame
    path.write_bytes(out)


def test_pcap_reader_and_ledger_derivation(tmp_path: Path) -> None:
    """A synthetic kernel capture: PORT 10,123,1,2,... grows by one byte on the way out."""
    cli, srv, gw = (
        IPv4Address("10.123.1.2"),
        IPv4Address("203.0.113.10"),
        IPv4Address("203.0.113.1"),
    )
    lines = [b"USER x\r\n", b"PORT 10,123,1,2,238,72\r\n", b"NOOP\r\n"]
    isn, sisn = 1000, 5000
    inside = [
        TcpPacket(0.0, cli, srv, 40000, 21, isn, 0, SYN, b""),
        TcpPacket(0.01, srv, cli, 21, 40000, sisn, isn + 1, SYN | ACK, b""),
    ]
    outside = [
        TcpPacket(0.0, gw, srv, 40000, 21, isn, 0, SYN, b""),
        TcpPacket(0.01, srv, gw, 21, 40000, sisn, isn + 1, SYN | ACK, b""),
    ]
    seq, shift, t = isn + 1, 0, 1.0
    for line in lines:
        out_line = line.replace(b"10,123,1,2", b"203,0,113,1")
        inside.append(TcpPacket(t, cli, srv, 40000, 21, seq, sisn + 1, ACK, line))
        outside.append(TcpPacket(t, gw, srv, 40000, 21, seq + shift, sisn + 1, ACK, out_line))
        shift += len(out_line) - len(line)
        ack_out = seq + shift + len(line)
        outside.append(TcpPacket(t + 0.1, srv, gw, 21, 40000, sisn + 1, ack_out, ACK, b""))
        inside.append(TcpPacket(t + 0.1, srv, cli, 21, 40000, sisn + 1, seq + len(line), ACK, b""))
        seq, t = seq + len(line), t + 1
    _pcap(tmp_path / "in.pcap", inside)
    _pcap(tmp_path / "out.pcap", outside)
    read_in = read_pcap(tmp_path / "in.pcap")
    assert read_in[2].payload == lines[0] and read_in[2].src == ip_address("10.123.1.2")
    result = compare(read_in, read_pcap(tmp_path / "out.pcap"), cli, srv, gw)
    assert result.kernel == (9, 0, 1) == result.ftpalg
    assert result.ok and result.seq_checked == 3 and result.ack_checked == 3, result.problems
