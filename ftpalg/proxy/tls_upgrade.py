"""`tls = terminate`: the client's control connection becomes TLS after ftpalg's `234`.

How this works. The core sends `234` and then `StartTls(CLIENT)` (core/tls_terminate.py);
the `234` is already written when this runs. Reading stops at once (the ClientHello must not
reach the plain protocol), and `loop.start_tls` (uvloop too) runs the server-side handshake
with the session's context, within `HANDSHAKE_TIMEOUT` (or the line timeout when that is
shorter: a handshake is the next thing the client owes, like a command line). Meanwhile the
half's transport is a stand-in that keeps what the session writes to the client (a server
reply that came in the meantime) and what it asks of reading; the TLS transport takes over
all of it. A handshake that fails (garbage instead of a ClientHello, a timeout, an alert)
ends the session with one log line; other sessions are not affected.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

from ftpalg.core.messages import Endpoint, Side
from ftpalg.ops.config import Config
from ftpalg.proxy import tls_context
from ftpalg.proxy.tls_context import HANDSHAKE_TIMEOUT

if TYPE_CHECKING:
    from ftpalg.core.session import Session
    from ftpalg.proxy.control import ControlSession, HalfProtocol


class _Handshaking(asyncio.Transport):
    """The half's transport while its TLS handshake runs."""

    def __init__(self, raw: asyncio.Transport) -> None:
        super().__init__()
        self.raw = raw
        self.pending: list[bytes] = []
        self.reading = True
        self.closing = False
        self.eof = False

    def write(self, data: Any) -> None:
        self.pending.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing or self.raw.is_closing()

    def close(self) -> None:
        self.closing = True
        self.raw.close()

    def abort(self) -> None:
        self.close()

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


def start_tls(control: ControlSession, side: Side) -> None:
    half = control.halves.get(side)
    context = getattr(control.plane, "tls_context", None)
    raw = half.writable() if half is not None else None
    if half is None or raw is None or not isinstance(context, ssl.SSLContext):
        control.close("TLS cannot start on this session")
        return
    raw.pause_reading()
    stand_in = _Handshaking(raw)
    half.transport = stand_in
    control.host.spawn(_handshake(control, half, raw, stand_in, context))


async def _handshake(
    control: ControlSession,
    half: HalfProtocol,
    raw: asyncio.Transport,
    stand_in: _Handshaking,
    context: ssl.SSLContext,
) -> None:
    try:
        timeout = min(HANDSHAKE_TIMEOUT, control.core.policy.line_timeout)
        new = await control.loop.start_tls(
            raw, half, context, server_side=True, ssl_handshake_timeout=timeout
        )
    except (OSError, ssl.SSLError, TimeoutError, ConnectionError, RuntimeError) as exc:
        raw.close()
        why = str(exc) or type(exc).__name__
        control.observe.log.info("tls_handshake_failed", side=half.side.value, error=why)
        control.close(f"TLS handshake failed: {why}")
        return
    if new is None or stand_in.closing:
        return
    transport = new
    half.transport = transport
    if stand_in.pending:
        transport.write(b"".join(stand_in.pending))
    if stand_in.eof:
        transport.close()
    elif not stand_in.reading:
        transport.pause_reading()


def implicit_tls(
    config: Config, local: Endpoint, core: Session, control: ControlSession
) -> dict[str, Any]:
    """Implicit FTPS: a connection to a `listen_implicit` address is TLS from its first byte.
    The session starts secured (no AUTH, PBSZ 0 implied), its data connections TLS until a
    `PROT C`; the returned arguments make `connect_accepted_socket` run the handshake before
    the banner. Anything else: no arguments."""
    if not any(
        ep.port == local.port and (ep.host.is_unspecified or ep.host == local.host)
        for ep in config.listen_implicit
    ):
        return {}
    core.tls.implicit()
    if (protect := getattr(control.plane, "protect", None)) is not None:
        protect(True)
    return {
        "ssl": tls_context.context_for(config),
        "ssl_handshake_timeout": min(HANDSHAKE_TIMEOUT, config.line_timeout),
    }
