"""One ftpalg per nftables table and network namespace: a lock the kernel releases for us.

How this works: ftpalg's table (`nft.py`) is replaced whole when it is installed and deleted
when ftpalg stops, so a second instance on the same table would wipe the first one's divert
rules and pinholes, and its exit would remove them for good. Before touching the table an
instance binds an abstract unix socket named after the table. Abstract socket names belong to
the network namespace, and the name is freed when the socket closes, which the kernel does
when the process ends however it ends (a crash or SIGKILL leaves no stale lock, unlike a
pid file). A second instance finds the name taken (EADDRINUSE) and refuses the table.
"""

from __future__ import annotations

import errno
import socket

from ftpalg.kernel.errors import KernelSetupError


def lock_name(table: str) -> bytes:
    return b"\0ftpalg/nft-table/" + table.encode()


def claim_table(table: str) -> socket.socket:
    """Hold the lock on `table` in this network namespace until the socket is closed; a
    KernelSetupError names the conflict when another process holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(lock_name(table))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise KernelSetupError(
                f"another ftpalg instance owns nftables table inet {table}"
                " in this network namespace"
            ) from None
        raise KernelSetupError(f"cannot lock nftables table inet {table}: {exc}") from exc
    return sock
