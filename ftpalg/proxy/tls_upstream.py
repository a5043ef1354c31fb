"""`tls_upstream = true` (with `tls = terminate`): ftpalg speaks explicit FTPS to a server
that requires it, while its clients speak FTPS (or plain FTP) to ftpalg.

How this works. Right after the dial, before the client's session is wired (gateway.py),
`secure_upstream()` reads the server's banner in plain, sends `AUTH TLS` and, on `234`, runs
the TLS handshake as the client over the same socket (`BioTlsLeg`: ftpalg's own TLS, whose
session data connections can resume), then sends `PBSZ 0` and `PROT P` inside TLS: the
server's data connections are TLS from then on, whatever the client says with its own `PROT`
(which ftpalg answers itself: tls_terminate.py). Every reply must be the expected one
(`220`, `234`, `200`, `200`) within `connect_timeout`; anything else refuses the client's
session with `421` naming what the server said, and the socket is closed. `attach()` then
hands the leg to the session's server half and gives it the banner, so the client sees the
server's own banner and the core never sees `AUTH`, `PBSZ` or `PROT`. The server's
certificate is not verified (a legacy server on the private side has a self-signed one):
this protects the private leg against eavesdropping, not against an active attacker there.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ftpalg.proxy.tls_bio_leg import BioTlsLeg
from ftpalg.proxy.tls_plane import TlsRelayPlane

if TYPE_CHECKING:
    from ftpalg.proxy.control import ControlSession

NEGOTIATION = ((b"PBSZ 0\r\n", b"200"), (b"PROT P\r\n", b"200"))
_FINAL = re.compile(rb"^(\d{3}) ")


class UpstreamTlsError(Exception):
    """The server did not take FTPS as ftpalg asked; the message is one line."""


def split_reply(buf: bytes) -> tuple[bytes, bytes] | None:
    """(the first complete FTP reply, the rest) of `buf`, or None while it is incomplete
    (RFC 959 §4.2: a multi-line reply `xyz-` ends with a line starting `xyz `)."""
    lines = buf.splitlines(keepends=True)
    if not lines or not lines[0].endswith(b"\n"):
        return None
    first = lines[0]
    end = 0
    if first[3:4] == b"-":
        code = first[:3] + b" "
        end = next((i for i, x in enumerate(lines) if i and x.startswith(code)), -1)
        if end < 0 or not lines[end].endswith(b"\n"):
            return None
    size = sum(len(x) for x in lines[: end + 1])
    return buf[:size], buf[size:]


def _expect(reply: bytes, code: bytes, what: str) -> None:
    if not reply.startswith(code):
        last = reply.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].strip()
        shown = last.decode("ascii", "replace")[:120]
        raise UpstreamTlsError(f"{what}: the server answered {shown!r}")


class _Replies(asyncio.Protocol):
    """The server's replies inside TLS while ftpalg negotiates (PBSZ, PROT)."""

    def __init__(self) -> None:
        self.buf = b""
        self.arrived = asyncio.Event()
        self.lost: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        self.arrived.set()

    async def next(self) -> bytes:
        while (got := split_reply(self.buf)) is None:
            if self.lost is not None:
                raise UpstreamTlsError(f"TLS: {self.lost}")
            self.arrived.clear()
            await self.arrived.wait()
        reply, self.buf = got
        return reply


@dataclass
class SecuredUpstream:
    leg: BioTlsLeg
    banner: bytes
    context: ssl.SSLContext


def upstream_attached(
    control: ControlSession, secured: SecuredUpstream, half: asyncio.Protocol
) -> bool:
    """The session's server half takes the leg and gets the banner; the session's TLS plane
    resumes the leg's TLS session on the server's data connections. False when the server
    has gone meanwhile."""
    if secured.leg.is_closing():
        return False
    plane = control.plane
    if isinstance(plane, TlsRelayPlane):
        plane.upstream = (secured.context, secured.leg)
    secured.leg.set_app(half)
    half.data_received(secured.banner)
    return True


async def _plain_reply(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """One reply read in plain. The server owes nothing behind it (after a 234 the next
    bytes are the client's ClientHello), so anything more is an error, never TLS input."""
    buf = b""
    while (got := split_reply(buf)) is None:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise UpstreamTlsError("the server closed the connection")
        buf += data
    if got[1]:
        raise UpstreamTlsError("the server sent more than one reply")
    return got[0]


async def secure_upstream(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    context: ssl.SSLContext,
    server_hostname: str | None,
    timeout: float,
) -> SecuredUpstream:
    """AUTH TLS, the handshake, PBSZ 0, PROT P on the dialed `sock`; UpstreamTlsError (and
    the socket closed) when the server does not go along."""
    leg: BioTlsLeg | None = None
    try:
        async with asyncio.timeout(timeout):
            banner = await _plain_reply(loop, sock)
            _expect(banner, b"220", "banner")
            await loop.sock_sendall(sock, b"AUTH TLS\r\n")
            _expect(await _plain_reply(loop, sock), b"234", "AUTH TLS")
            replies = _Replies()
            leg = BioTlsLeg(replies, context, server_hostname=server_hostname)
            await loop.connect_accepted_socket(lambda: leg, sock=sock)
            assert leg.handshake is not None
            await leg.handshake
            for command, code in NEGOTIATION:
                leg.write(command)
                _expect(await replies.next(), code, command.decode().strip())
            return SecuredUpstream(leg, banner, context)
    except TimeoutError:
        error = UpstreamTlsError(f"no FTPS negotiation within {timeout:g} s")
    except UpstreamTlsError as exc:
        error = exc
    except (OSError, ssl.SSLError) as exc:
        why = (exc.strerror if isinstance(exc, OSError) else None) or exc
        error = UpstreamTlsError(f"TLS: {why}")
    if leg is not None:
        leg.abort()
    sock.close()
    raise error
