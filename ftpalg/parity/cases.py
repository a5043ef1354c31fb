"""The case model of the differential suite and the rendering of its templates.

How this works. A `Case` is written once, as text templates (`str.format` fields such as
`{C}` for the client's address as `10,N,1,2` or `{P}` for the case's data port as `p1,p2`),
because the lab's client network (10.N.1.0/24) is chosen at run time. `render()` turns a case
into a `Rendered` one: bytes per TCP segment, the expected outcome of each path as an `Expect`.

Outcome specs (strings in the corpus):

- `= TEXT`: exactly TEXT (a template) is delivered to the receiver;
- `unchanged`: the input is delivered as sent;
- `reply NNN`: ftpalg answers the client with an NNN line and the server receives nothing;
- `nothing` / `stall`: nothing at all is delivered within the time box (`stall` is what the
  kernel does when it DROPs a PARTIAL match forever);
- `same` (ftpalg, mirror cases only): byte-identical to what the kernel delivered;
- `any` (kernel only): recorded, not checked (e.g. port 0, which nobody should rely on).

Every case gets its own data port (its expectation must not clash with another case's on the
kernel path, which would make the kernel pick a random port); ports are outside Linux's
ephemeral range so ftpalg's listener can always bind the original one.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ftpalg.lab.addresses import LabAddresses

MIRROR, DEVIATION, STALL = "mirror", "deviation", "kernel-stall"
CLASSES = (MIRROR, DEVIATION, STALL)
FIRST_PORT = 61000  # above the ephemeral range 32768-60999


@dataclass(frozen=True)
class Case:
    id: str
    side: str  # "client" (PORT/EPRT direction) or "server" (227/229 direction)
    segments: tuple[str, ...]  # templates; each is sent as its own TCP segment
    cls: str  # MIRROR, DEVIATION or STALL
    kernel: str  # outcome spec for the kernel path
    ftpalg: str  # outcome spec for ftpalg ("same" for mirror cases)
    v6: bool = False  # run on an IPv6 control connection
    port: int | None = None  # explicit data port (else one is assigned)
    config: str = "default"  # ftpalg configuration: "default" or "low" (--allow-low-data-ports)
    note: str = ""
    xfail: str = ""  # a known difference waiting for a decision: why (the run still passes)


@dataclass(frozen=True)
class Expect:
    kind: str  # "exact", "unchanged", "reply", "nothing", "same", "any"
    text: bytes = b""  # for "exact"
    code: bytes = b""  # for "reply"


@dataclass(frozen=True)
class Rendered:
    id: str
    side: str
    segments: tuple[bytes, ...]
    cls: str
    kernel: Expect
    ftpalg: Expect
    v6: bool
    port: int
    config: str
    note: str
    xfail: str

    @property
    def data(self) -> bytes:
        return b"".join(self.segments)

    @property
    def trigger(self) -> bytes:
        """What the client sends to make the server answer with the case's reply."""
        return b"EPSV\r\n" if self.data.startswith(b"229") else b"PASV\r\n"

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "side": self.side,
            "v6": self.v6,
            "segments": [s.decode("latin-1") for s in self.segments],
            "trigger": self.trigger.decode(),
        }


def commas(address: IPv4Address, zeros: bool = False) -> str:
    return ",".join(f"0{o:03d}" if zeros else str(o) for o in address.packed)


def dotted(address: IPv4Address, zeros: bool = False) -> str:
    return ".".join(f"0{o:03d}" if zeros else str(o) for o in address.packed)


def alias(address: IPv4Address) -> str:
    """h1..h4 with the last octet + 256: the kernel ORs it into the third, same address."""
    octets = list(address.packed)
    return ",".join(str(o) for o in [*octets[:3], octets[3] + 256])


def pi6(address: IPv6Address) -> str:
    """The kernel's %pI6: 8 groups of 4 lowercase hex digits, never compressed."""
    return address.exploded


def variables(a: LabAddresses, port: int) -> dict[str, str]:
    p1, p2 = port >> 8, port & 0xFF
    return {
        "N": str(a.subnet),
        "C": commas(a.client_v4),
        "Cz": commas(a.client_v4, zeros=True),
        "Calias": alias(a.client_v4),
        "c": dotted(a.client_v4),
        "cz": dotted(a.client_v4, zeros=True),
        "S": commas(a.server_v4),
        "Sz": commas(a.server_v4, zeros=True),
        "Salias": alias(a.server_v4),
        "G": commas(a.gw_outside_v4),
        "g": dotted(a.gw_outside_v4),
        "c6": a.client_v6.compressed,
        "C6": a.client_v6.compressed.upper(),
        "c6x": pi6(a.client_v6),
        "g6x": pi6(a.gw_outside_v6),
        "port": str(port),
        "portz": f"000{port}",
        "portwrap": str(port + 65536),
        "P": f"{p1},{p2}",
        "Pz": f"00{p1},000{p2}",
        "p1": str(p1),
        "p2": str(p2),
        "p1a": str(p1 + 256),
    }


def fill(template: str, values: dict[str, str]) -> bytes:
    return template.format(**values).encode("latin-1")


def parse_expect(spec: str, values: dict[str, str]) -> Expect:
    if spec.startswith("= "):
        return Expect("exact", fill(spec[2:], values))
    if spec.startswith("reply "):
        return Expect("reply", code=spec[6:].encode("ascii"))
    if spec == "stall":
        return Expect("nothing")
    if spec in ("unchanged", "nothing", "same", "any"):
        return Expect(spec)
    raise ValueError(f"unknown outcome spec {spec!r}")


def assign_ports(cases: list[Case]) -> dict[str, int]:
    """Each case's data port: its explicit one, else the next free one from FIRST_PORT."""
    explicit = {c.port for c in cases if c.port is not None}
    ports: dict[str, int] = {}
    nxt = FIRST_PORT
    for case in cases:
        if case.port is not None:
            ports[case.id] = case.port
            continue
        while nxt in explicit:
            nxt += 1
        ports[case.id] = nxt
        nxt += 1
    return ports


def render(cases: list[Case], addresses: LabAddresses) -> list[Rendered]:
    ports = assign_ports(cases)
    out = []
    for case in cases:
        values = variables(addresses, ports[case.id])
        out.append(
            Rendered(
                id=case.id,
                side=case.side,
                segments=tuple(fill(s, values) for s in case.segments),
                cls=case.cls,
                kernel=parse_expect(case.kernel, values),
                ftpalg=parse_expect(case.ftpalg, values),
                v6=case.v6,
                port=ports[case.id],
                config=case.config,
                note=case.note,
                xfail=case.xfail,
            )
        )
    return out
