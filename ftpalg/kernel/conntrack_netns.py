"""Sockets and sysctls inside a named network namespace; the conntrack sysctls.

How this works: :func:`in_netns` runs a function on a short-lived thread that first joins the
namespace (``setns(CLONE_NEWNET)`` only changes the calling thread). A socket created there
stays in that namespace for its whole life, and ``/proc/sys/net/...`` opened there is that
namespace's. The calling thread (and an asyncio loop on it) never changes namespace, and
nothing is forked. ``netns=None`` means the caller's own namespace (no thread).

Sysctls (per namespace; ``Documentation/networking/nf_conntrack-sysctl.rst``):

- ``net.netfilter.nf_conntrack_events``: 0 = no events, 1 = events for every conntrack,
  2 (default) = only for conntracks created while some ctnetlink listener is bound. With 2,
  the watcher must be bound before the connections it is meant to see start.
- ``net.netfilter.nf_conntrack_acct``: 0 (default) = no counters. The accounting extension
  is attached when a conntrack is *created*, so it must be on before the data connection.

A missing namespace is an error, never created (pyroute2's helpers would create it).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from ftpalg.kernel.errors import KernelSetupError

T = TypeVar("T")
_NETNS_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_NETLINK_NETFILTER = 12
_SO_RCVBUFFORCE = 33
_SYSCTL_DIR = "/proc/sys/net/netfilter"
EVENTS, ACCT = "nf_conntrack_events", "nf_conntrack_acct"


def netns_path(netns: str) -> str:
    if "/" in netns or netns in ("", ".", "..") or not os.path.exists(f"{_NETNS_DIR}/{netns}"):
        raise KernelSetupError(f"no such network namespace {netns!r}")
    return f"{_NETNS_DIR}/{netns}"


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` run inside ``netns`` (on a helper thread), or here when ``netns`` is None."""
    if netns is None:
        return fn()
    path = netns_path(netns)
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # re-raised on the calling thread
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def netlink_socket(netns: str | None, rcvbuf: int) -> socket.socket:
    """A ``NETLINK_NETFILTER`` socket in ``netns`` with a receive buffer of ``rcvbuf`` bytes.

    ``SO_RCVBUFFORCE`` (root) may exceed ``net.core.rmem_max``; otherwise ``SO_RCVBUF``.
    """

    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)

    try:
        sock = in_netns(netns, make)
    except OSError as exc:
        where = f" in netns {netns}" if netns else ""
        raise KernelSetupError(f"cannot open a netfilter netlink socket{where}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return sock


def _read(name: str) -> int:
    with open(f"{_SYSCTL_DIR}/{name}") as f:
        return int(f.read().strip())


def _write(name: str, value: int) -> None:
    with open(f"{_SYSCTL_DIR}/{name}", "w") as f:
        f.write(f"{value}\n")


def conntrack_sysctls(netns: str | None = None) -> dict[str, int]:
    """``{"nf_conntrack_events": N, "nf_conntrack_acct": N}`` of ``netns``."""
    try:
        return in_netns(netns, lambda: {EVENTS: _read(EVENTS), ACCT: _read(ACCT)})
    except OSError as exc:
        raise KernelSetupError(_sysctl_error("read", exc)) from exc


def ensure_conntrack_sysctls(netns: str | None = None) -> dict[str, tuple[int, int]]:
    """Turn on accounting and (when off) events in ``netns``; ``{name: (old, new)}`` changed.

    ``nf_conntrack_events`` 2 is left alone (events flow once the watcher is bound); 0 becomes
    1. ``nf_conntrack_acct`` becomes 1. Needs ``CAP_NET_ADMIN`` over the namespace.
    """

    def apply() -> dict[str, tuple[int, int]]:
        changed: dict[str, tuple[int, int]] = {}
        for name, ok, want in ((EVENTS, (1, 2), 1), (ACCT, (1,), 1)):
            old = _read(name)
            if old not in ok:
                _write(name, want)
                changed[name] = (old, _read(name))
        return changed

    try:
        return in_netns(netns, apply)
    except OSError as exc:
        raise KernelSetupError(_sysctl_error("set", exc)) from exc


def _sysctl_error(verb: str, exc: OSError) -> str:
    hint = " (nf_conntrack not loaded?)" if isinstance(exc, FileNotFoundError) else ""
    return f"cannot {verb} conntrack sysctls{hint}: {exc}"
