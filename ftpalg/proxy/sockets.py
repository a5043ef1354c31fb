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
- ``is_local_address`` is a bind test, done every time (addresses come and go). Caveat: with
  ``net.ipv4.ip_nonlocal_bind=1`` (or ``ipv6.ip_nonlocal_bind``) every address binds and so
  counts as local; do not enable it on an ftpalg gateway.
"""

from __future__ import annotations

import asyncio
import os
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
    getaddrinfo in its thread pool: a thread hand-off and a wake-up for every dial.
    """
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
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


def is_local_address(addr: IPAddress) -> bool:
    """Whether ``addr`` is assigned to this host (in this network namespace), right now."""
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
]
