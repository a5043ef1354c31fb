"""ftpalg's own TLS on a connection: a TLS data connection's legs (`tls = terminate`, PROT P;
ftpalg the server towards the client) and, with `tls_upstream`, ftpalg as the TLS *client* of
a server that requires TLS, on connections whose TLS session must resume another's (vsftpd's
`require_ssl_reuse`, its default).

How this works. asyncio's TLS transports cannot resume a given session (neither the stdlib
loop nor uvloop takes a `session`), and uvloop's loses the end of an upload when its reading
is paused (back-pressure) as the client closes (seen in the lab: an upload through
`tls_upstream` arrived short, no error; never with the stdlib loop or with this leg). So
this leg runs TLS itself over a plain transport: an `ssl.SSLObject` on two memory BIOs
(`SSLContext.wrap_bio(..., server_side=..., session=...)`); pausing it pauses the socket, so
unread bytes wait in the kernel, in order. `BioTlsLeg` is the plain transport's protocol,
and the transport of the protocol above it (`app`: the relay's leg, or the control session's
server half): ciphertext from the socket goes into the incoming BIO and the plaintext read
from the SSLObject goes up; what the app writes goes through the SSLObject and the outgoing
BIO to the socket. The app's `connection_made` comes once the handshake has finished (within
`HANDSHAKE_TIMEOUT`); a handshake that fails or times out closes the socket and the app (if
any) sees `connection_lost` with the reason. The server's `close_notify`, or a FIN without
one, is the app's `eof_received`, after which the leg closes itself; the app's `close()`
sends our `close_notify` and a FIN, then waits for the server's FIN before it closes (TLS
has no half-close: `can_write_eof` is False and `write_eof` raises, as asyncio's TLS
transports do). Back-pressure: the socket's pause/resume_writing go up to the app, the app's
pause/resume_reading down to the socket.
`set_app` hands the leg to another protocol (the control connection: from the negotiation to
the session's half).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, cast

from ftpalg.proxy.tls_context import HANDSHAKE_TIMEOUT

READ_SIZE = 256 * 1024
SHUTDOWN_TIMEOUT = 5.0  # seconds a closing leg waits for the peer's FIN


class BioTlsLeg(asyncio.Protocol, asyncio.Transport):
    def __init__(
        self,
        app: asyncio.Protocol | None,
        context: ssl.SSLContext,
        session: ssl.SSLSession | None = None,
        server_hostname: str | None = None,
        server_side: bool = False,
    ) -> None:
        asyncio.Transport.__init__(self)
        self.app = app
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        self.raw: asyncio.Transport | None = None
        self.ready = False  # the handshake has finished
        self.handshake: asyncio.Future[None] | None = None
        self.closing = False
        self.eof = False  # the server's close_notify or FIN was passed up
        self.error: Exception | None = None
        self.timer: asyncio.TimerHandle | None = None

    # ---- the plain socket's protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        loop = asyncio.get_running_loop()
        self.handshake = loop.create_future()
        self.timer = loop.call_later(HANDSHAKE_TIMEOUT, self._timed_out)
        self._step()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # after our close_notify: dropped while waiting for the server's FIN
        self.incoming.write(data)
        self._step()

    def eof_received(self) -> bool:
        if self.closing:
            return False
        self.incoming.write_eof()
        self._step()
        self._pass_eof()  # a FIN without close_notify ends the stream all the same
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        why = exc or self.error
        if not self.ready and why is None:
            why = ConnectionResetError("closed during the TLS handshake")
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(why or ConnectionResetError("closed"))
            self.handshake.exception()  # retrieved: a data leg never awaits it
        if self.app is not None:
            self.app.connection_lost(why)

    def pause_writing(self) -> None:
        if self.ready and self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.ready and self.app is not None:
            self.app.resume_writing()

    # ---- TLS ------------------------------------------------------------------------------

    def _step(self) -> None:
        if not self.ready:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                return self._flush()
            except (ssl.SSLError, ValueError) as exc:
                return self._fail(exc)
            self.ready = True
            if self.timer is not None:
                self.timer.cancel()
            self._flush()
            assert self.handshake is not None
            self.handshake.set_result(None)
            if self.app is not None:
                self.app.connection_made(self)
        while not self.eof and self.raw is not None:
            try:
                data = self.tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or FIN
                self._pass_eof()
                break
            except ssl.SSLError as exc:
                return self._fail(exc)
            if not data:  # the server's close_notify (SSLObject.read returns b"")
                self._pass_eof()
                break
            if self.app is not None:
                self.app.data_received(data)
        self._flush()

    def _pass_eof(self) -> None:
        """The server's stream ended: the app hears it and, unless it asks to stay open,
        the leg closes (our close_notify: what asyncio's TLS transports do)."""
        if self.ready and not self.eof:
            self.eof = True
            if self.app is None or not self.app.eof_received():
                self.close()

    def _flush(self) -> None:
        if self.outgoing.pending and self.raw is not None and not self.raw.is_closing():
            self.raw.write(self.outgoing.read())

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._flush()  # an alert OpenSSL wants the server to see
        if self.raw is not None:
            self.raw.close()

    def _timed_out(self) -> None:
        if not self.ready:
            self._fail(TimeoutError("TLS handshake timed out"))

    # ---- for the app: a transport ---------------------------------------------------------

    def set_app(self, app: asyncio.Protocol) -> None:
        """Hand the (handshaken) leg over to `app`: its connection_made comes now."""
        self.app = app
        app.connection_made(self)

    def session(self) -> ssl.SSLSession | None:
        return self.tls.session if self.ready else None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or not self.ready:
            return
        try:
            self.tls.write(bytes(data))
        except ssl.SSLError as exc:
            return self._fail(exc)
        self._flush()

    def close(self) -> None:
        """Our close_notify; then, unless the server has ended already, a FIN and what it
        still sends is read and dropped until its FIN (or SHUTDOWN_TIMEOUT): closing with
        unread input would reset the connection, and a reset can destroy the last data."""
        if self.closing:
            return
        self.closing = True
        raw = self.raw
        if raw is None:
            return
        if self.ready:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self.tls.unwrap()  # the server's close_notify may not have come yet
            self._flush()
        if self.ready and not self.eof and raw.can_write_eof():
            raw.write_eof()
            raw.resume_reading()
            self.timer = asyncio.get_running_loop().call_later(SHUTDOWN_TIMEOUT, raw.close)
        else:
            raw.close()

    def abort(self) -> None:
        self.closing = True
        if self.raw is not None:
            self.raw.abort()

    def is_closing(self) -> bool:
        return self.closing or self.raw is None or self.raw.is_closing()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def pause_reading(self) -> None:
        if self.raw is not None:
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.raw is not None:
            self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw is not None and self.raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() if self.raw is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.tls
        return self.raw.get_extra_info(name, default) if self.raw is not None else default
