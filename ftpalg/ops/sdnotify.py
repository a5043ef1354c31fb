"""systemd's notify protocol, without libsystemd: `READY=1` once ftpalg serves, and on stop
`STOPPING=1` with `EXTEND_TIMEOUT_USEC`, so a drain longer than the unit's TimeoutStopSec is
not cut short by SIGKILL (which would leave ftpalg's kernel state behind).

How this works: systemd passes a datagram socket's path in `NOTIFY_SOCKET` (a leading `@`
means the abstract namespace) to a unit with `Type=notify` / `NotifyAccess=main`; a message
is newline-separated `KEY=VALUE` lines in one datagram. Without `NOTIFY_SOCKET` (not under
systemd) every call does nothing. A failure to send is never fatal: the protocol is advisory.
"""

from __future__ import annotations

import os
import socket


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or path[0] not in "/@":
        return None
    return "\0" + path[1:] if path[0] == "@" else path


def notify(*lines: str) -> bool:
    """Send one message; True when it was sent."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError:
        return False
    return True


def ready() -> bool:
    return notify("READY=1", f"MAINPID={os.getpid()}", "STATUS=serving")


def stopping(drain_seconds: float) -> bool:
    """Stopping: running transfers may take `drain_seconds`, plus time to remove the kernel
    state; systemd waits that long beyond the time already granted."""
    extend_usec = int((drain_seconds + 15) * 1_000_000)
    return notify("STOPPING=1", f"EXTEND_TIMEOUT_USEC={extend_usec}", "STATUS=draining")
