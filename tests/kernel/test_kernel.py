"""TproxyKernel on a real client - gateway - server lab.

The lab tests prove what the rules are for, with real packets: a forwarded control connection
reaches ftpalg's transparent listener (and sees the original destination), reaches the real
server when the table is absent, and is reset — not routed past — when ftpalg's listener is
missing; a transparent data listener on the server's address needs no per-port rule; a
connection dialled from the server's address and port 20 reaches the client.
"""

from __future__ import annotations

import json
import select
import subprocess
from typing import Any

import pytest

from ftpalg.kernel import KernelSetupError, NftPlan, TproxyKernel
from ftpalg.kernel.nft import list_table

PLAN = NftPlan(proxy_port_v4=2121, proxy_port_v6=None, inside_ifaces=("gin",))
SERVER = "203.0.113.10"
CLIENT = "10.9.1.2"
SERVER6 = "2001:db8:2::10"
CLIENT6 = "2001:db8:1::2"


def build_topology(lab: Any) -> tuple[str, str, str]:
    """client (10.9.1.2) - gw (10.9.1.1 | 203.0.113.1) - server (203.0.113.10)."""
    c, g, s = lab.netns("c"), lab.netns("g"), lab.netns("s")
    steps = [
        (g, "ip link add gin type veth peer name cin netns " + c),
        (g, "ip link add gout type veth peer name sout netns " + s),
        (c, "ip addr add 10.9.1.2/24 dev cin"),
        (c, "ip link set cin up"),
        (c, "ip route add default via 10.9.1.1"),
        (g, "ip addr add 10.9.1.1/24 dev gin"),
        (g, "ip addr add 203.0.113.1/24 dev gout"),
        (g, "ip link set gin up"),
        (g, "ip link set gout up"),
        (g, "sysctl -qw net.ipv4.ip_forward=1"),
        (g, "sysctl -qw net.ipv4.conf.all.rp_filter=0"),
        (s, "ip addr add 203.0.113.10/24 dev sout"),
        (s, "ip link set sout up"),
        (s, "ip route add default via 203.0.113.1"),
        (c, "ip addr add 2001:db8:1::2/64 dev cin nodad"),
        (c, "ip -6 route add default via 2001:db8:1::1"),
        (g, "ip addr add 2001:db8:1::1/64 dev gin nodad"),
        (g, "ip addr add 2001:db8:2::1/64 dev gout nodad"),
        (g, "sysctl -qw net.ipv6.conf.all.forwarding=1"),
        (s, "ip addr add 2001:db8:2::10/64 dev sout nodad"),
        (s, "ip -6 route add default via 2001:db8:2::1"),
    ]
    for ns, cmd in steps:
        lab.sh(ns, *cmd.split())
    return c, g, s


IMPORTS = """
import json, socket, sys
from ipaddress import ip_address
from ftpalg.proxy.sockets import make_listener, make_dial_socket
"""

# Accept one connection on a listener, report addresses, greet, close.
ACCEPT_ONE = (
    IMPORTS
    + """
lst = make_listener(ip_address(sys.argv[1]), int(sys.argv[2]), transparent=True)
lst.setblocking(True)
print("ready", flush=True)
conn, peer = lst.accept()
conn.sendall(sys.argv[3].encode())
print(json.dumps({"sockname": conn.getsockname(), "peer": peer}), flush=True)
conn.close()
"""
)

CLIENT_CONNECT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    print(s.recv(100).decode() or "EOF")
except OSError as exc:
    print(type(exc).__name__)
"""


def raise_if_not_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"agent did not start: {line!r} {err}")


def start(lab: Any, ns: str, code: str, *args: str) -> subprocess.Popen[str]:
    prog = f"import sys\nsys.argv = ['agent', *{list(args)!r}]\n{code}"
    proc: subprocess.Popen[str] = lab.spawn(ns, prog)
    raise_if_not_ready(proc)
    return proc


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def connect(lab: Any, ns: str, host: str, port: int) -> str:
    prog = f"import sys\nsys.argv = ['c', {host!r}, '{port}']\n{CLIENT_CONNECT}"
    return str(lab.python(ns, prog)).strip()


@pytest.mark.lab
def test_setup_teardown_idempotent(lab: Any) -> None:
    ns = lab.netns()
    kernel = TproxyKernel(PLAN, route_table=100, netns=ns)
    kernel.teardown()  # before any setup: nothing to do, no error
    kernel.setup()
    kernel.setup()
    assert list_table("ftpalg", netns=ns) is not None
    assert lab.sh(ns, "ip", "rule").count("fwmark 0x1/0x1 lookup 100 proto 121") == 1
    assert "fwmark" not in lab.sh(ns, "ip", "-6", "rule")  # the plan is IPv4 only
    kernel.teardown()
    kernel.teardown()
    assert list_table("ftpalg", netns=ns) is None
    assert "fwmark" not in lab.sh(ns, "ip", "rule")


@pytest.mark.lab
def test_failed_setup_leaves_nothing(lab: Any) -> None:
    ns = lab.netns()
    lab.sh(ns, "ip", "link", "set", "lo", "down")  # the IPv6 local route cannot be added
    plan = NftPlan(proxy_port_v4=2121, proxy_port_v6=2121)
    with pytest.raises(KernelSetupError, match="ip -6 route add"):
        TproxyKernel(plan, netns=ns).setup()
    assert "fwmark" not in lab.sh(ns, "ip", "rule")
    assert list_table("ftpalg", netns=ns) is None


@pytest.mark.lab
@pytest.mark.timeout(90)
def test_tproxy_divert_fail_closed_and_transparent_data(lab: Any) -> None:
    c, g, s = build_topology(lab)
    kernel = TproxyKernel(PLAN, netns=g)
    server = start(lab, s, ACCEPT_ONE, SERVER, "21", "server")

    # Without ftpalg's table the gateway just forwards: the real server answers.
    assert connect(lab, c, SERVER, 21) == "server"
    assert finish(server)["peer"][0] == CLIENT
    server = start(lab, s, ACCEPT_ONE, SERVER, "21", "server")

    kernel.setup()
    # Table present, no ftpalg listener: reset by the forward chain, not routed past.
    assert connect(lab, c, SERVER, 21) == "ConnectionRefusedError"

    # ftpalg's transparent listener gets it, and sees the original destination.
    proxy = start(lab, g, ACCEPT_ONE, "0.0.0.0", "2121", "ftpalg")
    assert connect(lab, c, SERVER, 21) == "ftpalg"
    seen = finish(proxy)
    assert seen["sockname"] == [SERVER, 21] and seen["peer"][0] == CLIENT

    # A transparent data listener on the server's own address: no per-port rule needed.
    data = start(lab, g, ACCEPT_ONE, SERVER, "40000", "data")
    assert connect(lab, c, SERVER, 40000) == "data"
    assert finish(data)["sockname"] == [SERVER, 40000]

    # Active mode: the gateway dials the client from the server's address and port 20.
    client = start(
        lab,
        c,
        ACCEPT_ONE.replace("transparent=True", "transparent=False"),
        CLIENT,
        "5000",
        "client",
    )
    dial = (
        IMPORTS
        + f"""
d = make_dial_socket(ip_address({SERVER!r}), 20, transparent=True)
d.setblocking(True)
d.settimeout(5)
d.connect(({CLIENT!r}, 5000))
print(d.recv(100).decode())
"""
    )
    assert lab.python(g, dial).strip() == "client"
    assert finish(client)["peer"] == [SERVER, 20]

    kernel.teardown()
    assert connect(lab, c, SERVER, 21) == "server"  # forwarded again once ftpalg is gone
    finish(server)


@pytest.mark.lab
@pytest.mark.timeout(90)
def test_tproxy_ipv6(lab: Any) -> None:
    c, g, s = build_topology(lab)
    plan = NftPlan(proxy_port_v4=2121, proxy_port_v6=2122, inside_ifaces=("gin",))
    kernel = TproxyKernel(plan, netns=g)
    server = start(lab, s, ACCEPT_ONE, SERVER6, "21", "server6")
    kernel.setup()
    try:
        assert connect(lab, c, SERVER6, 21) == "ConnectionRefusedError"  # fail closed
        proxy = start(lab, g, ACCEPT_ONE, "::", "2122", "ftpalg6")
        assert connect(lab, c, SERVER6, 21) == "ftpalg6"
        seen = finish(proxy)
        assert seen["sockname"][:2] == [SERVER6, 21] and seen["peer"][0] == CLIENT6
        data = start(lab, g, ACCEPT_ONE, SERVER6, "40000", "data6")
        assert connect(lab, c, SERVER6, 40000) == "data6"
        assert finish(data)["sockname"][:2] == [SERVER6, 40000]
    finally:
        kernel.teardown()
    assert connect(lab, c, SERVER6, 21) == "server6"  # plain forwarding without the table
    assert finish(server)["peer"][0] == CLIENT6
