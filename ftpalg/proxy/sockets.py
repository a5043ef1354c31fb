"""Socket factories for listeners and dialled connections (stdlib ``socket`` only).

How this works:

- Every socket is non-blocking, close-on-exec and ``SO_REUSEADDR`` (a data listener on the
  server's own port must bind while earlier connections to that port sit in TIME_WAIT).
  IPv6 sockets are ``IPV6_V6ONLY``: each family gets its own listener.
- ``IP_TRANSPARENT`` / ``IPV6_TRANSPARENT`` (needs CAP_NET_ADMIN) lets a socket bind an
  address that is not local — the server's address for a passive data listener, the
  server's address and port 20 for an active data connection to the client. nftables'
  ``socket transparent 1`` rule then delivers the peer's packets to it.
- A dial socket is transparent only when ``transparent=True`` *and* its source is not a
  local address: a transparent socket bound to a local address would work too, but would
  need the capability for nothing (reverse mode runs without it).
- With source port 0 the socket sets ``IP_BIND_ADDRESS_NO_PORT`` so the port is chosen at
  ``connect()`` from the whole 4-tuple, not reserved exclusively at ``bind()``.
- ``is_local_address`` is a bind test (addresses come and go); the daemon keeps the answers
  until rtnetlink announces an address change (``watch_local_addresses``). Caveat: with
  ``net.ipv4.ip_nonlocal_bind=1`` (or ``ipv6.ip_nonlocal_bind``) every address binds and so
  counts as local; do not enable it on an ftpalg gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from ftpalg.core.messages import Endpoint

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_BIND_ADDRESS_NO_PORT = 24

IPAddress = IPv4Address | IPv6Address
_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK


def stream_socket(family: int) -> socket.socket:
    """A non-blocking TCP socket (made so at once: no separate fcntl/ioctl call)."""
    return socket.socket(family, _NONBLOCKING_STREAM)


def _new_socket(host: IPAddress) -> socket.socket:
    family = socket.AF_INET6 if host.version == 6 else socket.AF_INET
    sock = stream_socket(family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if host.version == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_transparent(sock: socket.socket, host: IPAddress) -> None:
    if host.version == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)


def make_listener(
    host: IPAddress, port: int, *, transparent: bool, backlog: int = 16
) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any). Raises OSError on failure."""
    sock = _new_socket(host)
    try:
        if transparent:
            _set_transparent(sock, host)
        sock.bind((str(host), port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def make_dial_socket(
    source_host: IPAddress, source_port: int, *, transparent: bool
) -> socket.socket:
    """An unconnected TCP socket bound to ``source_host:source_port``, ready for connect.

    ``transparent=True`` permits a non-local source (``IP_TRANSPARENT`` is set only then);
    with ``False`` a non-local source fails with OSError(EADDRNOTAVAIL).
    """
    sock = _new_socket(source_host)
    try:
        if transparent and not is_local_address(source_host):
            _set_transparent(sock, source_host)
        if source_port == 0:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((str(source_host), source_port))
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[str, int], timeout: float
) -> None:
    """Connect the non-blocking `sock` to the numeric `address`, within `timeout` seconds
    (TimeoutError after it; OSError(errno) when the connect fails).

    `loop.sock_connect` would do, but uvloop resolves even a numeric address with
    getaddrinfo in its thread pool: a thread hand-off and a wake-up for every dial. When the
    peer is near (veth, loopback), the handshake has run inside connect() already: one poll()
    takes the outcome at once, instead of a writer on the loop (uvloop: 8 system calls), a
    future and a timer.
    """
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
    probe = select.poll()  # often answered already: the handshake ran inside connect()
    probe.register(sock, select.POLLOUT)
    if probe.poll(0):
        if code := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            raise OSError(code, os.strerror(code))
        return
    waiter: asyncio.Future[bool] = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _settle, waiter, True)
    timer = loop.call_later(timeout, _settle, waiter, False)
    try:
        connected = await waiter
    finally:
        loop.remove_writer(fd)
        timer.cancel()
    if not connected:
        raise TimeoutError
    if code := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        raise OSError(code, os.strerror(code))


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


_PARSED: dict[str, IPAddress] = {}  # address text -> address: parsing it is pure Python


def endpoint(sockaddr: Any) -> Endpoint:
    """A socket address tuple as an Endpoint."""
    host = sockaddr[0]
    address = _PARSED.get(host)
    if address is None:
        if len(_PARSED) >= 4096:
            _PARSED.clear()
        address = _PARSED[host] = ip_address(host)
    return Endpoint(address, int(sockaddr[1]))


class _Answers:
    """Bind-test answers, kept until the kernel announces that an address came or went.

    An rtnetlink socket joined to the address groups receives RTM_NEWADDR/RTM_DELADDR as
    the change is made (an IPv6 address also when its duplicate detection ends): while its
    queue is empty nothing changed, and one recv() that finds it empty replaces the three
    system calls of a bind test. Any message, or lost ones (ENOBUFS), empties the answers.
    Not announced: the ``ip_nonlocal_bind`` sysctls (see the caveat above)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, _NL_FLAGS, socket.NETLINK_ROUTE)
        self.sock.bind((0, _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
        self.known: dict[IPAddress, bool] = {}

    def fresh(self) -> dict[IPAddress, bool]:
        try:
            while self.sock.recv(65536):
                self.known.clear()
        except BlockingIOError:
            pass
        except OSError:  # ENOBUFS: announcements were lost
            self.known.clear()
        if len(self.known) > 1024:
            self.known.clear()
        return self.known


_RTMGRP_IPV4_IFADDR, _RTMGRP_IPV6_IFADDR = 0x10, 0x100
_NL_FLAGS = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_answers: _Answers | None = None


def watch_local_addresses() -> None:
    """Let `is_local_address` keep its answers until an address changes (the daemon: one
    network namespace for good). Without it (or when the socket cannot be made), every
    call is a bind test."""
    global _answers
    if _answers is None:
        with contextlib.suppress(OSError):  # no rtnetlink here: bind tests, as before
            _answers = _Answers()


def is_local_address(addr: IPAddress) -> bool:
    """Whether ``addr`` is assigned to this host (in this network namespace), right now."""
    if _answers is None:
        return _binds(addr)
    known = _answers.fresh()
    local = known.get(addr)
    if local is None:
        local = known[addr] = _binds(addr)
    return local


def _binds(addr: IPAddress) -> bool:
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False  # family not supported (e.g. IPv6 disabled)
    with sock:
        try:
            sock.bind((str(addr), 0))
        except OSError:
            return False
    return True


def set_control_options(sock: socket.socket) -> None:
    """Options for FTP control connections: no Nagle, inline urgent data, keepalive.

    Without TCP_NODELAY a relayed session stalls on Nagle + delayed ACK (``226`` held back);
    SO_OOBINLINE keeps Telnet Synch/``ABOR`` urgent bytes in the stream (RFC 959 §4.1.3).
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


__all__ = [
    "IPV6_TRANSPARENT",
    "IP_BIND_ADDRESS_NO_PORT",
    "IP_TRANSPARENT",
    "connect",
    "endpoint",
    "is_local_address",
    "make_dial_socket",
    "make_listener",
    "set_control_options",
    "stream_socket",
    "watch_local_addresses",
]
