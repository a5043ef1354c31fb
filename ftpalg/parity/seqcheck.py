"""The seq/ack correction ledger, checked against what the kernel applied on the wire.

How this works. With the kernel helper active, tcpdump runs in the gateway namespace on the
inside and the outside interface while the scripted client sends, one command at a time
(waiting for each reply): `USER`, a PORT that masquerade makes one byte longer or shorter
(`10,N,1,2` becomes `203,0,113,1`), `NOOP`, a zero-padded PORT (a large negative change),
`NOOP`. From the two captures: every client segment's relative sequence number inside and
outside gives the shift the kernel applied to it; every server segment's ACK outside and
inside gives the shift it took back. The kernel's final record is (position of the last
length-changing segment, its shift, the shift after it).

The same client byte stream, segment by segment, goes into ftpalg's core `Session` (faces:
client 10.N.1.2, server and server face 203.0.113.10, client face 203.0.113.1). Its
`ledger[Side.CLIENT]` must equal the kernel's record, its `map_seq`/`map_ack` — with the
ledger as it stood when the packet passed — must reproduce every captured seq and ACK, and the
bytes it would send to the server must equal the bytes the kernel sent.
"""

from __future__ import annotations

import random
import signal
import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from ftpalg.core.ledger import SeqCorrection
from ftpalg.core.messages import Endpoint, ListenerOpened, OpenListener, Send, Side
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Faces, Session
from ftpalg.lab.netns import Lab, LabError
from ftpalg.parity.cases import FIRST_PORT, fill, variables
from ftpalg.parity.pcap import ACK, SYN, TcpPacket, read_pcap
from ftpalg.parity.peers import run_peers

STEPS = ("PORT {C},{P}\r\n", "NOOP\r\n", "PORT {Cz},{Pz}\r\n", "NOOP\r\n")
LEDGER_PORT = FIRST_PORT - 100
Record = tuple[int, int, int]


@dataclass
class LedgerResult:
    kernel: Record  # (correction_pos, offset_before, offset_after) derived from the captures
    ftpalg: Record  # session.ledger[Side.CLIENT]
    shifts: list[tuple[int, int]]  # per client segment: (relative seq inside, seq shift)
    seq_checked: int = 0
    ack_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.kernel == self.ftpalg and not self.problems


def _record(led: SeqCorrection) -> Record:
    return (led.correction_pos, led.offset_before, led.offset_after)


def _capture(lab: Lab, ifname: str, path: Path) -> subprocess.Popen[Any]:
    argv = [
        "tcpdump",
        "-i",
        ifname,
        "-w",
        str(path),
        "-U",
        "-n",
        "-s",
        "0",
        "-Z",
        "root",
        "tcp port 21",
    ]
    proc = lab.popen("gw", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "listening on" not in line:
        raise LabError(f"tcpdump did not start on {ifname}: {line.strip()}")
    return proc


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_ledger(lab: Lab, workdir: Path, window: float) -> LedgerResult:
    a = lab.addresses
    values = variables(a, LEDGER_PORT)
    case = {
        "id": "ledger",
        "side": "client",
        "v6": False,
        "wait": True,
        "trigger": "",
        "segments": [fill(s, values).decode("latin-1") for s in STEPS],
    }
    inside, outside = workdir / "inside.pcap", workdir / "outside.pcap"
    caps = [
        _capture(lab, lab.ifnames.gw_inside, inside),
        _capture(lab, lab.ifnames.gw_outside, outside),
    ]
    try:
        obs = run_peers(lab, workdir, "L", [case], window)["ledger"]
    finally:
        for proc in caps:
            _stop(proc)
    if obs.error:
        raise LabError(f"ledger run failed: {obs.error}")
    return compare(read_pcap(inside), read_pcap(outside), a.client_v4, a.server_v4, a.gw_outside_v4)


def _flow(
    packets: list[TcpPacket], client: IPv4Address, server: IPv4Address
) -> tuple[list[TcpPacket], list[TcpPacket]]:
    c2s = [p for p in packets if p.src == client and p.dst == server and p.dport == 21]
    s2c = [p for p in packets if p.src == server and p.dst == client and p.sport == 21]
    return c2s, s2c


def _data(packets: list[TcpPacket], isn: int) -> list[tuple[int, TcpPacket]]:
    seen: set[int] = set()
    out = []
    for p in packets:
        rel = (p.seq - isn) % (1 << 32)
        if p.payload and rel not in seen:  # a retransmission is not a new segment
            seen.add(rel)
            out.append((rel, p))
    return out


def compare(
    inside: list[TcpPacket],
    outside: list[TcpPacket],
    client: IPv4Address,
    server: IPv4Address,
    gw: IPv4Address,
) -> LedgerResult:
    in_c2s, in_s2c = _flow(inside, client, server)
    out_c2s, out_s2c = _flow(outside, gw, server)
    syn_in = next(p for p in in_c2s if p.flags & SYN)
    syn_out = next(p for p in out_c2s if p.flags & SYN)
    seg_in, seg_out = _data(in_c2s, syn_in.seq), _data(out_c2s, syn_out.seq)
    problems = (
        []
        if len(seg_in) == len(seg_out)
        else [f"{len(seg_in)} client segments inside, {len(seg_out)} outside"]
    )
    pairs = list(zip(seg_in, seg_out, strict=False))
    shifts = [(ri, ro - ri) for (ri, _), (ro, _) in pairs]
    changed = [
        i for i, ((_, pi), (_, po)) in enumerate(pairs) if len(pi.payload) != len(po.payload)
    ]
    kernel: Record = (0, 0, 0)
    if changed and changed[-1] + 1 < len(pairs):
        last = changed[-1]
        kernel = (shifts[last][0], shifts[last][1], shifts[last + 1][1])
    elif changed:
        problems.append("no client segment after the last rewrite: offset_after unobserved")

    faces = Faces(
        client=Endpoint(client, syn_in.sport),
        server=Endpoint(server, 21),
        server_face=Endpoint(server, 21),
        client_face=Endpoint(gw, syn_out.sport),
    )
    session = Session(faces, CorePolicy(), now=0.0, rng=random.Random(1))
    states: list[tuple[float, SeqCorrection]] = []  # ledger after each client segment
    for (rel, p_in), (_, p_out) in pairs:
        sent = _feed(session, p_in.payload)
        led = session.ledger[Side.CLIENT]
        states.append((p_out.ts, SeqCorrection(*_record(led))))
        if sent != p_out.payload:
            problems.append(
                f"segment at {rel}: ftpalg sends {sent!r}, kernel sent {p_out.payload!r}"
            )
        if led.map_seq(rel) != (p_out.seq - syn_out.seq) % (1 << 32):
            problems.append(f"segment at {rel}: map_seq {led.map_seq(rel)} != kernel")
    acks = 0
    for p_out, p_in in zip(out_s2c, in_s2c, strict=False):
        if not p_out.flags & ACK or p_out.flags & SYN:
            continue
        before = [s for ts, s in states if ts < p_out.ts]
        led = before[-1] if before else SeqCorrection()
        ack_out, ack_in = (p_out.ack - syn_out.seq) % (1 << 32), (p_in.ack - syn_in.seq) % (1 << 32)
        acks += 1
        if led.map_ack(ack_out) != ack_in:
            problems.append(f"ACK {ack_out} outside: map_ack {led.map_ack(ack_out)} != {ack_in}")
    if len(out_s2c) != len(in_s2c):
        problems.append(f"{len(out_s2c)} server packets outside, {len(in_s2c)} inside")
    ftpalg = _record(session.ledger[Side.CLIENT])
    return LedgerResult(kernel, ftpalg, shifts, len(pairs), acks, problems)


def _feed(session: Session, data: bytes) -> bytes:
    """Client bytes into the session; the bytes it sends on to the server."""
    actions = session.receive(Side.CLIENT, data, 0.0)
    out = b""
    while actions:
        action = actions.pop(0)
        if isinstance(action, OpenListener):  # the kernel keeps the original port: so do we
            actions += session.handle(ListenerOpened(action.listener, action.port), 0.0)
        elif isinstance(action, Send) and action.side is Side.SERVER:
            out += action.data
    return out
