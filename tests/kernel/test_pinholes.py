"""Kernel pinholes on the real packet path: client — gateway — server namespaces, the gateway
with ftpalg's table (pinholes on) and an operator's forward chain with policy drop plus the
documented `ct mark` rule. Elements are written in-process (nfnl) as the data plane does.

Each test proves one guarantee: passive with the server seeing the gateway's address, active
with DNAT to the client, single use, peer-bound, expiry, close, and a lost first SYN that
still connects on its retransmission."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from ftpalg.core.messages import Endpoint
from ftpalg.kernel import nft
from ftpalg.kernel.nfnl import SetElements
from ftpalg.kernel.pinholes import Pinhole, close_ops, open_ops, render_sets
from tests.kernel.conftest import Lab

pytestmark = pytest.mark.lab

CLIENT, CLIENT_OTHER = IPv4Address("10.77.1.2"), IPv4Address("10.77.1.3")
GW_IN, GW_OUT = IPv4Address("10.77.1.1"), IPv4Address("198.51.100.1")
SERVER = IPv4Address("198.51.100.10")

OPERATOR_FIREWALL = """\
table inet operator {
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tct mark & 0x80000000 == 0x80000000 accept
\t}
}
"""


def echo_peer(host: IPv4Address, port: int) -> str:
    """A server that answers every connection with the peer address it saw."""
    return f"""
import socket
s = socket.create_server(({str(host)!r}, {port}))
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{{peer[0]}}:{{peer[1]}}".encode())
    c.close()
"""


def connect_once(src: IPv4Address, dst: Endpoint, sport: int, timeout: float) -> str:
    """A client that connects from src:sport and prints the reply, or `failed: <error>`."""
    return f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(({str(src)!r}, {sport}))
s.settimeout({timeout})
try:
    s.connect(({str(dst.host)!r}, {dst.port}))
    print(s.recv(100).decode())
except OSError as exc:
    print(f"failed: {{type(exc).__name__}}")
"""


@dataclass
class Net:
    lab: Lab
    cli: str
    gw: str
    srv: str
    elements: SetElements

    def serve(self, ns: str, host: IPv4Address, port: int) -> None:
        proc = self.lab.spawn(ns, echo_peer(host, port))
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def connect(
        self, ns: str, src: IPv4Address, dst: Endpoint, sport: int = 0, timeout: float = 1.5
    ) -> str:
        code = connect_once(src, dst, sport, timeout)
        return self.lab.python(ns, code, timeout=timeout + 10).strip()


def _veth(lab: Lab, a: str, a_if: str, b: str, b_if: str) -> None:
    lab.sh(a, "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
    lab.sh(a, "ip", "link", "set", a_if, "up")
    lab.sh(b, "ip", "link", "set", b_if, "up")


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    cli, gw, srv = lab.netns("cli"), lab.netns("gw"), lab.netns("srv")
    _veth(lab, cli, "eth0", gw, "lan0")
    _veth(lab, srv, "eth0", gw, "wan0")
    lab.sh(cli, "ip", "addr", "add", f"{CLIENT}/24", "dev", "eth0")
    lab.sh(cli, "ip", "addr", "add", f"{CLIENT_OTHER}/24", "dev", "eth0")
    lab.sh(cli, "ip", "route", "add", "default", "via", str(GW_IN))
    lab.sh(gw, "ip", "addr", "add", f"{GW_IN}/24", "dev", "lan0")
    lab.sh(gw, "ip", "addr", "add", f"{GW_OUT}/24", "dev", "wan0")
    lab.sh(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.sh(srv, "ip", "addr", "add", f"{SERVER}/24", "dev", "eth0")  # no route to 10.77.1.0/24
    plan = nft.NftPlan(proxy_port_v4=None, proxy_port_v6=None, pinholes=True)
    nft.apply(nft.render(plan), netns=gw)
    nft.apply(OPERATOR_FIREWALL, netns=gw)
    with SetElements("ftpalg", netns=gw) as elements:
        yield Net(lab, cli, gw, srv, elements)


def passive(pinhole_id: int, port: int, timeout_ms: int = 30_000) -> Pinhole:
    face = Endpoint(SERVER, port)
    return Pinhole(pinhole_id, CLIENT, face, face, GW_OUT, timeout_ms)


def test_rendered_sets_cover_both_families() -> None:
    text = "\n".join(render_sets(4) + render_sets(6))
    for name in ("gate4", "tag4", "dnat4", "snat4", "gate6", "tag6", "dnat6", "snat6"):
        assert f" {name} {{" in text


def test_passive_pinhole_admits_once_from_its_peer_only(net: Net) -> None:
    net.serve(net.srv, SERVER, 40002)
    net.elements.apply(open_ops(passive(2, 40002)))
    assert net.connect(net.cli, CLIENT_OTHER, Endpoint(SERVER, 40002)) == "failed: TimeoutError"
    first = net.connect(net.cli, CLIENT, Endpoint(SERVER, 40002))
    assert first.startswith(f"{GW_OUT}:"), first  # SNAT: the server saw the gateway
    assert net.connect(net.cli, CLIENT, Endpoint(SERVER, 40002)) == "failed: TimeoutError"


def test_active_pinhole_dnats_to_the_client(net: Net) -> None:
    net.serve(net.cli, CLIENT, 50001)
    face = Endpoint(GW_OUT, 45001)
    pin = Pinhole(3, SERVER, face, Endpoint(CLIENT, 50001), SERVER, 30_000)
    net.elements.apply(open_ops(pin))
    seen = net.connect(net.srv, SERVER, face, sport=20)
    assert seen == f"{SERVER}:20"  # the client saw the server, from port 20
    # used: no DNAT any more, the gateway itself answers with a reset; the client sees nothing
    assert net.connect(net.srv, SERVER, face, sport=20) == "failed: ConnectionRefusedError"


def test_expired_and_closed_pinholes_admit_nothing(net: Net) -> None:
    net.serve(net.srv, SERVER, 40003)
    net.serve(net.srv, SERVER, 40004)
    net.elements.apply(open_ops(passive(4, 40003, timeout_ms=1000)))
    closed = passive(5, 40004)
    net.elements.apply(open_ops(closed))
    net.elements.apply(close_ops(closed))
    time.sleep(1.5)
    assert net.connect(net.cli, CLIENT, Endpoint(SERVER, 40003)) == "failed: TimeoutError"
    assert net.connect(net.cli, CLIENT, Endpoint(SERVER, 40004)) == "failed: TimeoutError"
    net.elements.apply(close_ops(closed))  # closing twice is fine


def test_a_lost_first_syn_still_connects_on_its_retransmission(net: Net) -> None:
    drop_first_syn = """\
table inet lossy {
\tset seen {
\t\ttype ipv4_addr . inet_service; flags dynamic, timeout; timeout 60s;
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 40005 tcp flags syn ip saddr . tcp sport @seen accept
\t\ttcp dport 40005 tcp flags syn add @seen { ip saddr . tcp sport } drop
\t}
}
"""
    nft.apply(drop_first_syn, netns=net.srv)
    net.serve(net.srv, SERVER, 40005)
    net.elements.apply(open_ops(passive(6, 40005)))
    seen = net.connect(net.cli, CLIENT, Endpoint(SERVER, 40005), timeout=5)
    assert seen.startswith(f"{GW_OUT}:"), seen
