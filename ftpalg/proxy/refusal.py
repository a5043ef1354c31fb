"""The one way a control connection is turned away before its session starts.

Every refusal — session limit, shutting down, out of descriptors, no upstream, upstream
unreachable — is an FTP reply on the raw socket, a half-close so the reply is delivered
before the FIN, and one `session_refused` observation with its typed reason.
"""

from __future__ import annotations

import contextlib
import socket

from ftpalg.core.messages import Endpoint
from ftpalg.core.observations import Refusal
from ftpalg.ops.events import SessionRefused
from ftpalg.ops.observer import Observer


def refuse(
    conn: socket.socket,
    reply: bytes,
    kind: Refusal,
    client: Endpoint | None,
    observe: Observer,
    detail: str | None = None,
) -> None:
    with contextlib.suppress(OSError):  # the peer may be gone already: nothing to tell
        conn.send(reply)
        conn.shutdown(socket.SHUT_WR)
    conn.close()
    observe(SessionRefused(kind, reply, client, detail))
