"""The corpus: the kernel's tricky inputs and variants, classed by docs/core.md.

How this works. One helper call per case (`cm`/`cd`/`cs`: client line, mirror / deviation /
kernel stall; `sm`/`sd`/`ss`: the same for a server reply). A case is one string (one TCP
segment) or a tuple of strings (one segment each, sent 0.2 s apart). Templates are filled by
`cases.render()` with the lab's addresses: `{C}` client `10,N,1,2`, `{G}` gateway outside
`203,0,113,1`, `{S}` server `203,0,113,10`, `{c}`/`{g}` dotted, `{c6}` the client's IPv6
address, `{g6x}` the gateway's in %pI6 form, `{P}` the case's data port as `p1,p2`, `{port}`
in decimal (see `cases.variables` for the rest: zero-padded, aliased and wrapped forms).

Classes: mirror — ftpalg must deliver exactly what the kernel delivers (the kernel spec is
checked too); deviation — the kernel does one thing, ftpalg the documented other; kernel-stall
— the kernel DROPs the segment forever, ftpalg's documented outcome is checked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ftpalg.parity.cases import DEVIATION, MIRROR, STALL, Case

Segs = str | tuple[str, ...]
R = "\r\n"


def _segs(s: Segs) -> tuple[str, ...]:
    return (s,) if isinstance(s, str) else s


def cm(id: str, s: Segs, kernel: str, **kw: Any) -> Case:
    return Case(id, "client", _segs(s), MIRROR, kernel, "same", **kw)


def cd(id: str, s: Segs, kernel: str, ftpalg: str, **kw: Any) -> Case:
    return Case(id, "client", _segs(s), DEVIATION, kernel, ftpalg, **kw)


def cs(id: str, s: Segs, ftpalg: str = "reply 501", **kw: Any) -> Case:
    return Case(id, "client", _segs(s), STALL, "stall", ftpalg, **kw)


def sm(id: str, s: Segs, kernel: str, **kw: Any) -> Case:
    return Case(id, "server", _segs(s), MIRROR, kernel, "same", **kw)


def sd(id: str, s: Segs, kernel: str, ftpalg: str, **kw: Any) -> Case:
    return Case(id, "server", _segs(s), DEVIATION, kernel, ftpalg, **kw)


def ss(id: str, s: Segs, ftpalg: str = "unchanged", **kw: Any) -> Case:
    return Case(id, "server", _segs(s), STALL, "stall", ftpalg, **kw)


NAT_PORT_0 = "parses, but under NAT no port 0 is found: DROP"
PORT_OUT = "= PORT {G},{P}\r\n"
EPRT_OUT = "= EPRT |1|{g}|{port}|\r\n"
EPRT6_OUT = "= EPRT |2|{g6x}|{port}|\r\n"
PASV = "227 Entering Passive Mode ({S},{P}).\r\n"
EPSV = "229 Entering Extended Passive Mode (|||{port}|)\r\n"

CLIENT_PORT = [
    cm("port-basic", "PORT {C},{P}\r\n", PORT_OUT, note="§8.1"),
    cm("port-lower", "port {C},{P}\r\n", "= port {G},{P}\r\n", note="§8.2 case kept"),
    cm("port-mixed", "PoRt {C},{P}\r\n", "= PoRt {G},{P}\r\n"),
    cm("port-x", "PORTX {C},{P}\r\n", "= PORTX {G},{P}\r\n", note="§8.3 4-byte prefix"),
    cm("port-prose", "PORTABLE {C},{P}\r\n", "= PORTABLE {G},{P}\r\n"),
    cm("port-zeros", "PORT {Cz},{Pz}\r\n", PORT_OUT, note="§8.11 canonical, shorter"),
    cm("port-long-zeros", "PORT {C},{p1},00000000000{p2}\r\n", PORT_OUT),
    cm("port-empty-p2", "PORT {C},250,\r\n", "= PORT {G},250,0\r\n", port=64000, note="§8.9"),
    cm("port-max", "PORT {C},255,255\r\n", PORT_OUT, port=65535),
    cm("port-1024", "PORT {C},4,0\r\n", PORT_OUT, port=1024),
    cm("port-crcr", "PORT {C},{P}\r\r\n", "= PORT {G},{P}\r\r\n"),
    cm("port-cr-junk", "PORT {C},{P}\rjunk\r\n", "= PORT {G},{P}\rjunk\r\n"),
    cm("port-leading-space", " PORT {C},{P}\r\n", "unchanged", note="§8.14 no match"),
    cm("xport", "XPORT {C},{P}\r\n", "unchanged"),
    cm("noop", "NOOP\r\n", "unchanged"),
    cm("port-then-noop", "PORT {C},{P}\r\nNOOP\r\n", "= PORT {G},{P}\r\nNOOP\r\n"),
    cm("iac-then-port", "\xff\xf4PORT {C},{P}\r\n", "unchanged"),
    cm("telnet-iac", "NOOP\xff\xf4\xff\xf2\r\n", "unchanged"),
    cd(
        "port-empty-p1",
        "PORT {C},,79\r\n",
        "= PORT {G},0,79\r\n",
        "reply 500",
        port=79,
        note="§8.9 port 79 < 1024",
    ),
    cd("port-alias-p1", "PORT {C},{p1a},{p2}\r\n", PORT_OUT, "reply 501", note="§8.10"),
    cd("port-alias-h4", "PORT {Calias},{P}\r\n", PORT_OUT, "reply 501", note="§8.10"),
    cd("port-other-host", "PORT 10,{N},1,99,{P}\r\n", "unchanged", "reply 500", note="§8.12"),
    cd("port-empty-h2", "PORT 10,,1,2,{P}\r\n", "unchanged", "reply 500"),
    cd("port-gw-address", "PORT {G},{P}\r\n", "unchanged", "reply 500"),
    cs("port-zero", "PORT {C},0,0\r\n", port=1, note=NAT_PORT_0),
    cd("port-1023", "PORT {C},3,255\r\n", PORT_OUT, "reply 500", port=1023),
    cd("port-25", "PORT {C},0,25\r\n", PORT_OUT, "reply 500", port=25),
    cd(
        "port-pipelined",
        "NOOP\r\nPORT {C},{P}\r\n",
        "unchanged",
        "= NOOP\r\nPORT {G},{P}\r\n",
        note="§8.15",
    ),
    cd(
        "port-blank-first",
        "\r\nPORT {C},{P}\r\n",
        "unchanged",
        "= \r\nPORT {G},{P}\r\n",
        note="§8.14",
    ),
    cd(
        "port-two-in-one",
        "PORT {C},244,36\r\nPORT {C},244,37\r\n",
        "= PORT {G},244,36\r\nPORT {C},244,37\r\n",
        "= PORT {G},244,36\r\nPORT {G},244,37\r\n",
        port=62500,
        note="the kernel leaks the second",
    ),
    cd(
        "port-cr-no-lf",
        "PORT {C},{P}\r",
        "= PORT {G},{P}\r",
        "nothing",
        note="kernel: CR ends the numbers; ftpalg waits for LF",
    ),
    cd("nul-byte", "NOOP \x00\r\n", "unchanged", "reply 500", note="limit"),
    cd("long-line", "NOOP " + "a" * 5000 + "\r\n", "unchanged", "reply 500", note="limit"),
    cs("port-two-spaces", "PORT  {C},{P}\r\n", note="§8.4"),
    cs("port-bare-lf", "PORT {C},{P}\n", note="§8.5"),
    cs("port-trailing-space", "PORT {C},{P} \r\n", note="§8.6"),
    cs("port-five", "PORT {C},{p1}\r\n", note="§8.7"),
    cs("port-seven", "PORT {C},{P},1\r\n", note="§8.8"),
    cs("port-trailing-comma", "PORT {C},{P},\r\n", note="§8.8"),
    cs("port-keyword", "PORT\r\n", note="§8.13"),
    cs("port-tab", "PORT\t{C},{P}\r\n"),
    cs("port-plus", "PORT {C},+{p1},{p2}\r\n"),
    cs("port-hex", "PORT {C},0x{p1},{p2}\r\n"),
    cs("port-semicolons", "PORT 10;{N};1;2;{p1};{p2}\r\n"),
    cs("port-split-po", ("PO", "RT {C},{P}\r\n"), PORT_OUT, note="§8.31"),
    cs("port-split-mid", ("PORT {C},", "{P}\r\n"), PORT_OUT, note="§8.31"),
    cs("seg-p", "P", "nothing", note="§8.13"),
    cs("seg-por", "POR", "nothing", note="§8.13"),
]

CLIENT_EPRT = [
    cm("eprt-basic", "EPRT |1|{c}|{port}|\r\n", EPRT_OUT, note="§8.17"),
    cm("eprt-bang", "EPRT !1!{c}!{port}!\r\n", EPRT_OUT, note="§8.17 output uses |"),
    cm("eprt-tilde", "EPRT ~1~{c}~{port}~\r\n", EPRT_OUT),
    cm("eprt-lower", "eprt |1|{c}|{port}|\r\n", "= eprt |1|{g}|{port}|\r\n"),
    cm("eprt-junk", "EPRT |1|{c}|{port}|junk\r\n", "= EPRT |1|{g}|{port}|junk\r\n", note="§8.20"),
    cm("eprt-trailing-space", "EPRT |1|{c}|{port}| \r\n", "= EPRT |1|{g}|{port}| \r\n"),
    cm("eprt-zeros", "EPRT |1|{cz}|{portz}|\r\n", EPRT_OUT),
    cm("eprt-1025", "EPRT |1|{c}|1025|\r\n", EPRT_OUT, port=1025),
    cd("eprt-no-eol", "EPRT |1|{c}|{port}|", "= EPRT |1|{g}|{port}|", "nothing"),
    cd("eprt-wrap", "EPRT |1|{c}|{portwrap}|\r\n", EPRT_OUT, "reply 501", note="§8.19"),
    cd("eprt-other-host", "EPRT |1|10.{N}.1.99|{port}|\r\n", "unchanged", "reply 500"),
    cd("eprt-empty-octet", "EPRT |1|10..1.2|{port}|\r\n", "unchanged", "reply 500"),
    cd("eprt-alias-octet", "EPRT |1|10.{N}.1.258|{port}|\r\n", EPRT_OUT, "reply 501"),
    cd("eprt-1021", "EPRT |1|{c}|1021|\r\n", EPRT_OUT, "reply 500", port=1021),
    cd(
        "eprt-pipelined",
        "NOOP\r\nEPRT |1|{c}|{port}|\r\n",
        "unchanged",
        "= NOOP\r\nEPRT |1|{g}|{port}|\r\n",
    ),
    cs("eprt-family-2", "EPRT |2|{c6}|{port}|\r\n", note="§8.18"),
    cs("eprt-family-3", "EPRT |3|{c}|{port}|\r\n", note="§8.18"),
    cs("eprt-digit-delim", "EPRT 1|1|{c}|{port}|\r\n", note="§8.18"),
    cs("eprt-space-delim", "EPRT  |1|{c}|{port}|\r\n", note="§8.18"),
    cs("eprt-port-0", "EPRT |1|{c}|0|\r\n", note="§8.19"),
    cs("eprt-port-65536", "EPRT |1|{c}|65536|\r\n", note="§8.19"),
    cs("eprt-unclosed", "EPRT |1|{c}|{port}\r\n", note="§8.19"),
    cs("eprt-alpha-port", "EPRT |1|{c}|46a5|\r\n", note="§8.19"),
    cs("eprt-mixed-delims", "EPRT |1|{c}!{port}!\r\n"),
    cs("eprt-short", "EPRT ||\r\n"),
    cs("eprt-three-octets", "EPRT |1|10.{N}.1|{port}|\r\n"),
    cs("eprt-split", ("EPRT |1|{c}|", "{port}|\r\n"), EPRT_OUT),
    cs("seg-epr", "EPR", "nothing", note="§8.13"),
]

SERVER = [
    sm("pasv-basic", PASV, "unchanged", note="§8.22 rewritten to the same text"),
    sm("pasv-no-parens", "227 Entering Passive Mode {S},{P}\r\n", "unchanged", note="§8.23"),
    sm("pasv-equals", "227 ={S},{P}\r\n", "unchanged", note="§8.24"),
    sm("pasv-more-text", "227 ({S},{P}) and more text\r\n", "unchanged", note="§8.24"),
    sm("pasv-no-close", "227 Entering Passive Mode ({S},{P}\r\n", "unchanged"),
    sm("pasv-dot", "227 Entering Passive Mode {S},{P}.\r\n", "unchanged"),
    sm("pasv-bare-lf", "227 Entering Passive Mode ({S},{P})\n", "unchanged"),
    sm(
        "pasv-zeros",
        "227 Entering Passive Mode ({Sz},{Pz})\r\n",
        "= 227 Entering Passive Mode ({S},{P})\r\n",
    ),
    sm("pasv-max", "227 Entering Passive Mode ({S},255,255)\r\n", "unchanged", port=65535),
    sm(
        "pasv-999",
        "227 Entering Passive Mode ({S},3,231)\r\n",
        "unchanged",
        port=999,
        note="no low-port policy for 227",
    ),
    sm("pasv-continuation", "227-Entering Passive Mode ({S},{P})\r\n", "unchanged", note="§8.26"),
    sm("pasv-2270", "2270 Entering Passive Mode ({S},{P})\r\n", "unchanged"),
    sm("reply-200", "200 Command okay.\r\n", "unchanged"),
    sd(
        "pasv-multiline",
        "227-Entering\r\n227 Entering Passive Mode ({Sz},{P})\r\n",
        "unchanged",
        "= 227-Entering\r\n227 Entering Passive Mode ({S},{P})\r\n",
        note="§8.26",
    ),
    sd(
        "pasv-third-party",
        "227 Entering Passive Mode (198,51,100,7,{P})\r\n",
        "unchanged",
        "= 227 Entering Passive Mode ({S},{P})\r\n",
        note="§8.27",
    ),
    sd(
        "pasv-alias-h4",
        "227 Entering Passive Mode ({Salias},{P})\r\n",
        "= 227 Entering Passive Mode ({S},{P})\r\n",
        "unchanged",
    ),
    sd(
        "pasv-alias-p1",
        "227 Entering Passive Mode ({S},{p1a},{p2})\r\n",
        "= 227 Entering Passive Mode ({S},{P})\r\n",
        "unchanged",
    ),
    sm(
        "pasv-long-zeros",
        "227 Entering Passive Mode ({S},{p1},0000000000{p2})\r\n",
        "= 227 Entering Passive Mode ({S},{P})\r\n",
    ),
    sm("pasv-digits-after", "227 Entering Passive Mode ({S},{P}) 1 2 3\r\n", "unchanged"),
    sd("pasv-no-eol", "227 Entering Passive Mode ({S},{P})", "unchanged", "nothing"),
    ss("pasv-port-0", "227 Entering Passive Mode ({S},0,0)\r\n", port=2, note=NAT_PORT_0),
    ss("pasv-digit-prose", "227 Entering Passive Mode v2 ({S},{P})\r\n", note="§8.25"),
    ss("pasv-logout", "227 Logout.\r\n", note="§8.25"),
    ss("pasv-space-only", "227 \r\n", note="§8.30"),
    ss("pasv-five", "227 Entering Passive Mode ({S},{p1})\r\n"),
    ss("pasv-seven", "227 Entering Passive Mode ({S},{P},1)\r\n"),
    ss("pasv-spaces", "227 Entering Passive Mode (203, 0, 113, 10, {p1}, {p2})\r\n"),
    ss("pasv-segment-end", "227 Entering Passive Mode {S},{P}", "nothing", note="§8.25"),
    ss(
        "pasv-split-22", ("22", "7 Entering Passive Mode ({S},{P}).\r\n"), "= " + PASV, note="§8.31"
    ),
    ss(
        "pasv-split-paren",
        ("227 Entering Passive Mode (", "{S},{P}).\r\n"),
        "= " + PASV,
        note="§8.31",
    ),
    ss("seg-2", "2", "nothing", note="§8.30"),
    ss("seg-227", "227", "nothing", note="§8.30"),
    sm("epsv-basic", EPSV, "unchanged", note="§8.28"),
    sm(
        "epsv-bang",
        "229 Entering Extended Passive Mode (!!!{port}!)\r\n",
        "= " + EPSV,
        note="§8.28",
    ),
    sm("epsv-zeros", "229 Entering Extended Passive Mode (|||{portz}|)\r\n", "= " + EPSV),
    sm("epsv-trailing", "229 Entering Extended Passive Mode (|||{port}|) ok\r\n", "unchanged"),
    sm("epsv-text-after", "229 Ok (|||{port}|).\r\n", "unchanged"),
    sm("epsv-continuation", "229-Entering Extended Passive Mode (|||{port}|)\r\n", "unchanged"),
    sm("epsv-no-close-paren", "229 Entering Extended Passive Mode (|||{port}|\r\n", "unchanged"),
    sm("epsv-hash", "229 Entering Extended Passive Mode (###{port}#)\r\n", "= " + EPSV),
    sd(
        "epsv-pipelined",
        "150 ok\r\n229 Entering Extended Passive Mode (!!!{port}!)\r\n",
        "unchanged",
        "= 150 ok\r\n" + EPSV,
    ),
    ss("epsv-paren-in-prose", "229 Mode (v2) (|||{port}|)\r\n"),
    sd(
        "epsv-wrap",
        "229 Entering Extended Passive Mode (|||{portwrap}|)\r\n",
        "= " + EPSV,
        "unchanged",
        note="§8.29",
    ),
    ss("epsv-no-paren", "229 Extended Passive Mode |||{port}|\r\n", note="§8.29"),
    ss("epsv-two-delims", "229 Extended Passive Mode (||{port}|)\r\n", note="§8.29"),
    ss("epsv-family", "229 Extended Passive Mode (|1|{port}|)\r\n", note="§8.29"),
    ss("epsv-space-delim", "229 Extended Passive Mode ( |||{port}|)\r\n", note="§8.29"),
    ss("epsv-port-0", "229 Extended Passive Mode (|||0|)\r\n", note="§8.29"),
    ss("epsv-unclosed", "229 Extended Passive Mode (|||{port})\r\n", note="§8.29"),
    ss(
        "epsv-split",
        ("229 Entering Extended Passive Mode (|||", "{port}|)\r\n"),
        "= " + EPSV,
        note="§8.31",
    ),
    ss("seg-229", "229", "nothing", note="§8.30"),
]

V6 = [
    cm("v6-eprt-basic", "EPRT |2|{c6}|{port}|\r\n", EPRT6_OUT, note="§8.21"),
    cm("v6-eprt-upper", "EPRT |2|{C6}|{port}|\r\n", EPRT6_OUT),
    cm("v6-eprt-full", "EPRT |2|{c6x}|{port}|\r\n", EPRT6_OUT),
    cm("v6-eprt-bang", "EPRT !2!{c6}!{port}!\r\n", EPRT6_OUT),
    cm("v6-eprt-dotted-tail", "EPRT |2|2001:db8:1::0.0.0.2|{port}|\r\n", EPRT6_OUT, note="§8.21"),
    cm("v6-eprt-junk", "EPRT |2|{c6}|{port}|junk\r\n", "= EPRT |2|{g6x}|{port}|junk\r\n"),
    cd("v6-eprt-other-host", "EPRT |2|2001:db8:1::99|{port}|\r\n", "unchanged", "reply 500"),
    cd("v6-eprt-mapped", "EPRT |2|::ffff:{c}|{port}|\r\n", "unchanged", "reply 500"),
    cd("v6-eprt-1018", "EPRT |2|{c6}|1018|\r\n", EPRT6_OUT, "reply 500", port=1018),
    cd("v6-port-quirk", "PORT 32,1,13,184,{P}\r\n", "unchanged", "reply 501", note="§1.8 quirk"),
    cd("v6-port-v4", "PORT {C},{P}\r\n", "unchanged", "reply 501"),
    cs("v6-eprt-family-1", "EPRT |1|{c}|{port}|\r\n", note="§8.18"),
    cs("v6-eprt-zone", "EPRT |2|{c6}%eth0|{port}|\r\n", note="§8.21"),
    cs("v6-eprt-brackets", "EPRT |2|[{c6}]|{port}|\r\n", note="§8.21"),
    cs("v6-eprt-two-gaps", "EPRT |2|2001:db8::1::2|{port}|\r\n"),
    cm("v6-eprt-group-zeros", "EPRT |2|2001:db8:1::00002|{port}|\r\n", EPRT6_OUT),
    cm("v6-eprt-tail-zeros", "EPRT |2|2001:db8:1::0.0.0.02|{port}|\r\n", EPRT6_OUT),
    cs("v6-eprt-group-5-digits", "EPRT |2|2001:db8:1::10002|{port}|\r\n"),
    cs("v6-eprt-split", ("EPRT |2|{c6}|", "{port}|\r\n"), EPRT6_OUT),
    sm("v6-epsv-basic", EPSV, "unchanged"),
    sm("v6-epsv-bang", "229 Entering Extended Passive Mode (!!!{port}!)\r\n", "= " + EPSV),
    sm("v6-pasv-v4", PASV, "unchanged", note="kernel: not the sender; ftpalg: IPv4 on IPv6"),
    sd(
        "v6-pasv-quirk",
        "227 Entering Passive Mode (32,1,13,184,{P})\r\n",
        "unchanged",
        "unchanged",
        note="§1.8 quirk",
    ),
    ss("v6-epsv-no-paren", "229 Extended Passive Mode |||{port}|\r\n"),
]

LOW_PORTS = [
    cm("low-port-1022", "PORT {C},3,254\r\n", PORT_OUT, port=1022, config="low"),
    cm("low-port-22", "PORT {C},0,22\r\n", PORT_OUT, port=22, config="low"),
    cm("low-port-empty-p1", "PORT {C},,77\r\n", "= PORT {G},0,77\r\n", port=77, config="low"),
    cm("low-eprt-1020", "EPRT |1|{c}|1020|\r\n", EPRT_OUT, port=1020, config="low"),
    cm("low-v6-eprt-1019", "EPRT |2|{c6}|1019|\r\n", EPRT6_OUT, port=1019, config="low"),
]

CASES: list[Case] = [
    *CLIENT_PORT,
    *CLIENT_EPRT,
    *SERVER,
    *[replace(c, v6=True) for c in V6],
    *[replace(c, v6=c.id.startswith("low-v6")) for c in LOW_PORTS],
]
