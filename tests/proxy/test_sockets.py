"""Socket factories: loopback listeners and dial sockets; transparency in a private netns."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, cast

import pytest

from ftpalg.proxy.sockets import (
    IP_BIND_ADDRESS_NO_PORT,
    IP_TRANSPARENT,
    connect,
    is_local_address,
    make_dial_socket,
    make_listener,
    set_control_options,
    stream_socket,
)
from tests.requirements import unavailable

V4 = IPv4Address("127.0.0.1")
V6 = IPv6Address("::1")


def has_ipv6_loopback() -> bool:
    return is_local_address(V6)


def test_listener_v4_loopback() -> None:
    with make_listener(V4, 0, transparent=False) as lst:
        host, port = lst.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert not lst.getblocking()
        assert lst.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert lst.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert lst.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT) == 0
        assert not lst.get_inheritable()
        with socket.create_connection((host, port), timeout=5):
            lst.setblocking(True)
            conn, _ = lst.accept()
            conn.close()


def test_listener_v6_loopback_is_v6only() -> None:
    if not has_ipv6_loopback():
        unavailable("no IPv6 loopback (::1)")
    with make_listener(V6, 0, transparent=False) as lst:
        host, port, *_ = lst.getsockname()
        assert host == "::1" and port > 0
        assert lst.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        with socket.create_connection(("::1", port), timeout=5):
            pass


def test_listener_bind_failure_raises_and_closes() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with make_listener(V4, 0, transparent=False) as lst:
        port = lst.getsockname()[1]
        with pytest.raises(OSError) as info:
            make_listener(V4, port, transparent=False)  # still LISTENing
        assert info.value.errno == errno.EADDRINUSE
    assert len(os.listdir("/proc/self/fd")) == before


def test_dial_socket_port_zero_defers_port_choice() -> None:
    with make_listener(V4, 0, transparent=False) as lst:
        port = lst.getsockname()[1]
        with make_dial_socket(V4, 0, transparent=True) as d:
            assert d.getsockname() == ("127.0.0.1", 0)  # no port reserved before connect
            assert d.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT) == 1
            assert d.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT) == 0  # local source
            assert not d.getblocking()
            d.setblocking(True)
            d.settimeout(5)
            d.connect(("127.0.0.1", port))
            assert d.getsockname()[1] > 0


def tcp_states(port: int) -> set[str]:
    """The states (/proc/net/tcp hex codes) of IPv4 sockets whose local port is `port`."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return {r.split()[3] for r in rows if int(r.split()[1].split(":")[1], 16) == port}


def test_dial_socket_fixed_port_and_reuse() -> None:
    """A fixed source port is bound again while its last connection is in TIME_WAIT (the
    next data connection from the same port)."""
    with make_listener(V4, 0, transparent=False) as lst:
        port = lst.getsockname()[1]
        a = make_dial_socket(V4, 0, transparent=False)
        a.setblocking(True)
        a.connect(("127.0.0.1", port))
        src_port = a.getsockname()[1]
        peer, _ = lst.accept()
        a.close()  # our side closes first: TIME_WAIT once the peer's FIN has come
        peer.close()
        deadline = time.monotonic() + 5
        while tcp_states(src_port) != {"06"} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tcp_states(src_port) == {"06"}  # TIME_WAIT, nothing else on the port
        with make_dial_socket(V4, src_port, transparent=False) as b:
            assert b.getsockname() == ("127.0.0.1", src_port)


class NoWaiting:
    """A loop that fails the test if `connect` waits for the socket at all."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"connect waited: loop.{name}")


def test_connect_answered_inside_connect_registers_nothing() -> None:
    """On loopback the handshake (or the refusal) runs inside connect(): the outcome is taken
    at once, with no writer registered on the loop (uvloop: 8 system calls), no future and no
    timer; the refusal is still an OSError with its errno."""
    loop = cast(asyncio.AbstractEventLoop, NoWaiting())
    with make_listener(V4, 0, transparent=False) as srv, stream_socket(socket.AF_INET) as sock:
        asyncio.run(connect(loop, sock, ("127.0.0.1", srv.getsockname()[1]), 5.0))
        accepted, peer = srv.accept()
        with accepted:
            assert peer == sock.getsockname()
        port = srv.getsockname()[1]
    with stream_socket(socket.AF_INET) as sock, pytest.raises(OSError) as refused:
        asyncio.run(connect(loop, sock, ("127.0.0.1", port), 5.0))  # nothing listens now
    assert refused.value.errno == errno.ECONNREFUSED


def test_is_local_address() -> None:
    assert is_local_address(V4)
    assert is_local_address(IPv4Address("127.0.0.2"))  # all of 127/8 is local
    assert not is_local_address(IPv6Address("fe80::1"))  # link-local without scope


def test_control_options() -> None:
    with socket.socket() as s:
        set_control_options(s)
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


# --- lab: transparency needs root and addresses that exist only in our namespace ---------


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        unavailable("needs root for network namespaces and IP_TRANSPARENT")
    name = f"fk{secrets.token_hex(3)}-s"
    made = False
    try:
        for cmd in (["ip", "netns", "add", name], ["ip", "-n", name, "link", "set", "lo", "up"]):
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except FileNotFoundError:
                unavailable("'ip' is not installed")
            if proc.returncode != 0:
                unavailable(f"{' '.join(cmd)}: {proc.stderr.strip()}")
            made = True
        yield name
    finally:
        if made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


PROBE = """
import errno, json, socket
from ipaddress import ip_address
from ftpalg.proxy.sockets import *
out = {}
for host in ("198.51.100.7", "2001:db8::7"):
    addr = ip_address(host)
    level, opt = (socket.IPPROTO_IPV6, IPV6_TRANSPARENT) if addr.version == 6 else (
        socket.IPPROTO_IP, IP_TRANSPARENT)
    r = {"local": is_local_address(addr)}
    try:
        make_listener(addr, 2100, transparent=False).close()
        r["plain"] = "bound"
    except OSError as exc:
        r["plain"] = errno.errorcode[exc.errno]
    with make_listener(addr, 2100, transparent=True) as lst:
        r["listener"] = list(lst.getsockname()[:2])
        r["listener_transparent"] = lst.getsockopt(level, opt)
    with make_dial_socket(addr, 20, transparent=True) as d:
        r["dial"] = list(d.getsockname()[:2])
        r["dial_transparent"] = d.getsockopt(level, opt)
    out[host] = r
print(json.dumps(out))
"""


@pytest.mark.lab
def test_transparent_listener_on_non_local_address(netns: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for host in ("198.51.100.7", "2001:db8::7"):
        r = out[host]
        assert r["local"] is False
        assert r["plain"] == "EADDRNOTAVAIL"
        assert r["listener"] == [str(ip_address(host)), 2100]
        assert r["listener_transparent"] == 1
        assert r["dial"] == [host, 20]
        assert r["dial_transparent"] == 1


WATCH_PROBE = """
import json, subprocess
from ipaddress import ip_address
from ftpalg.proxy import sockets
from ftpalg.proxy.sockets import is_local_address, watch_local_addresses
watch_local_addresses()
seen = []
for host, extra in (("198.51.100.7", []), ("2001:db8::7", ["nodad"])):
    addr = ip_address(host)
    plen = "/128" if addr.version == 6 else "/32"
    seen.append(is_local_address(addr))  # not yet: the answer is kept ...
    seen.append(is_local_address(addr))
    seen.append(sockets._answers.known.get(addr))
    subprocess.run(["ip", "addr", "add", host + plen, "dev", "lo", *extra], check=True)
    seen.append(is_local_address(addr))  # ... until the address comes
    subprocess.run(["ip", "addr", "del", host + plen, "dev", "lo"], check=True)
    seen.append(is_local_address(addr))  # ... and goes
print(json.dumps(seen))
"""


@pytest.mark.lab
def test_kept_answers_follow_addresses_that_come_and_go(netns: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", WATCH_PROBE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [False, False, False, True, False] * 2
