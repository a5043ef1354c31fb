"""`tls = terminate`, PROT P: one data connection relayed between a TLS client and a plain
server (the splice relay, relay.py, cannot decrypt); with `tls_upstream` the server's leg is
TLS too (ftpalg the TLS client, resuming the control connection's session:
tls_bio_leg.py), and the client's leg may then be plain (PROT C).

How this works. The client's socket gets ftpalg's own server-side TLS (`BioTlsLeg`, memory
BIOs over a plain transport: uvloop's TLS transport can lose an upload's end, see there;
its handshake must finish within `HANDSHAKE_TIMEOUT`), the server's is plain (or
`BioTlsLeg` as the client, `tls_upstream`); two small protocols pass what one receives
to the other's transport, and back-pressure pauses the reading side while the writing side's
buffer is full. Bytes that arrive before the other transport stands are kept and written
first by its `connection_made`, so nothing that arrives later can overtake them. The
handshake comes first: until it has finished, what the server sends (a download) waits in
the kernel. Ends: the server's EOF (a download is complete) closes the
TLS side cleanly (`close_notify` after the buffered data); the client's EOF or
`close_notify` (an upload is complete) half-closes the server's side, and the server's own
close then ends the client's. The relay is over when both transports are gone.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from ftpalg.proxy.tls_bio_leg import BioTlsLeg


@dataclass(slots=True)
class TlsRelayResult:
    client_to_server: int
    server_to_client: int
    error: str | None


class _Leg(asyncio.Protocol):
    def __init__(self, relay: _Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer: _Leg | None = None
        self.received = 0
        self.gone = False
        self.early: list[bytes] = []  # received before the peer's transport stood
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = transport  # type: ignore[assignment]  # uvloop's: not subclasses
        peer = self.peer
        if peer is not None and peer.early:  # first what the peer received before this
            t.write(b"".join(peer.early))  # type: ignore[attr-defined]
            peer.early.clear()  # transport stood: later bytes go straight through
        if peer is not None and (peer.eof or peer.gone):  # the peer's upload ended meanwhile
            if t.can_write_eof():  # type: ignore[attr-defined]
                t.write_eof()  # type: ignore[attr-defined]
            else:
                t.close()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        peer = self.peer
        if peer is not None and peer.transport is None:
            self.early.append(data)
        elif peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if peer.transport.can_write_eof():
                peer.transport.write_eof()  # the client's upload is complete: tell the server
            else:
                peer.transport.close()  # TLS: close_notify after what is buffered
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        if exc is not None and self.relay.error is None:
            self.relay.error = f"{self.name}: {exc}"
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()
        self.relay.leg_done()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Relay:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done = loop.create_future()
        self.error: str | None = None
        self.legs = 2

    def leg_done(self) -> None:
        self.legs -= 1
        if self.legs == 0 and not self.done.done():
            self.done.set_result(None)


async def tls_relay(
    loop: asyncio.AbstractEventLoop,
    client: socket.socket,
    server: socket.socket,
    context: ssl.SSLContext | None,
    upstream: tuple[ssl.SSLContext, ssl.SSLSession | None] | None = None,
) -> TlsRelayResult:
    """Relay until both ends are closed; a failed handshake closes both and says why.
    `context`: the client's leg is TLS with ftpalg as the server (None: plain, PROT C);
    `upstream` (tls_upstream): the server's leg is TLS with ftpalg as the client, resuming
    the given session (tls_bio_leg.py)."""
    relay = _Relay(loop)
    tls_leg, plain_leg = _Leg(relay, "client"), _Leg(relay, "server")
    tls_leg.peer, plain_leg.peer = plain_leg, tls_leg
    client_protocol: asyncio.Protocol = tls_leg
    if context is not None:  # tls_leg's connection_made comes after the handshake
        client_protocol = BioTlsLeg(tls_leg, context, server_side=True)
    try:
        await loop.connect_accepted_socket(lambda: client_protocol, sock=client)
        if isinstance(client_protocol, BioTlsLeg):
            assert client_protocol.handshake is not None
            await client_protocol.handshake
    except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
        client.close()
        server.close()
        return TlsRelayResult(0, 0, f"client TLS handshake: {exc or type(exc).__name__}")
    server_protocol: asyncio.Protocol = plain_leg
    if upstream is not None:  # plain_leg's connection_made comes after the handshake
        server_protocol = BioTlsLeg(plain_leg, *upstream)
    try:
        await loop.connect_accepted_socket(lambda: server_protocol, sock=server)
    except OSError as exc:
        server.close()
        if tls_leg.transport is not None:
            tls_leg.transport.close()
        relay.error = f"server: {exc}"
        relay.leg_done()
    await relay.done
    return TlsRelayResult(tls_leg.received, plain_leg.received, relay.error)
