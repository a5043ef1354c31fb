"""`tls = terminate`: the relay data plane of a session whose client may ask for PROT P.

How this works. As `RelayPlane` (relay_plane.py) — a listener per expectation, accept, dial —
but when the client last said `PROT P` (the core's `ProtectData`), the joined connection
runs through `tls_relay.py`: ftpalg is the TLS server on the client's leg (the accepted one in
passive mode, the dialed one in active mode: FTPS keeps the TLS roles of the control
connection) and plain to the server. With `PROT C` the splice relay carries it as usual —
unless `tls_upstream`: then every data connection's server leg is TLS, ftpalg the client,
resuming the TLS session of the control connection to the server (`upstream`, set by the
gateway), and the client's leg follows its PROT.
The session's TLS context lives here too: the control connection's upgrade
(`tls_upgrade.py`) and every data connection share it, so a client can resume the control
connection's TLS session on its data connections.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from ftpalg.core.messages import ConnectData, DataConnected, DataFinished, Event
from ftpalg.core.wire import Address
from ftpalg.ops.observer import Observer
from ftpalg.proxy.relay_plane import PlaneHost, RelayPlane
from ftpalg.proxy.sockets import endpoint
from ftpalg.proxy.tls_bio_leg import BioTlsLeg
from ftpalg.proxy.tls_relay import tls_relay


class TlsRelayPlane(RelayPlane):
    def __init__(
        self,
        host: PlaneHost,
        feed: Callable[[Event], None],
        observe: Observer,
        context: ssl.SSLContext,
        client: Address,
    ) -> None:
        super().__init__(host, feed, observe)
        self.tls_context = context
        self.client = client  # the client's address: which leg of a data connection is TLS
        self.private = False  # PROT P
        # tls_upstream: the server's legs are TLS too, resuming this leg's session
        self.upstream: tuple[ssl.SSLContext, BioTlsLeg] | None = None

    def protect(self, private: bool) -> None:
        self.private = private

    def connect(self, action: ConnectData) -> None:
        if not self.private and self.upstream is None:
            super().connect(action)
            return
        accepted = self._accepted.pop(action.conn, None)
        if accepted is not None:
            self.host.spawn(self._run_tls(action, accepted), data=True)

    async def _run_tls(self, action: ConnectData, accepted: socket.socket) -> None:
        start = self.loop.time()
        a_to_d = d_to_a = 0
        try:
            passive = endpoint(accepted.getpeername()).host == self.client
            dialed = await self.host.dial(action.target, action.source)
        except OSError as exc:
            accepted.close()
            error: str | None = f"connect {action.target}: {exc.strerror or exc}"
        else:
            self.feed(DataConnected(action.conn))
            client, server = (accepted, dialed) if passive else (dialed, accepted)
            context = self.tls_context if self.private else None
            upstream = None
            if self.upstream is not None:
                upstream = (self.upstream[0], self.upstream[1].session())
            result = await tls_relay(self.loop, client, server, context, upstream)
            up, down = result.client_to_server, result.server_to_client
            a_to_d, d_to_a = (up, down) if passive else (down, up)
            error = result.error
        seconds = self.loop.time() - start
        self.feed(DataFinished(action.conn, a_to_d, d_to_a, seconds, error))
