"""Accepting control connections, with an answer even when descriptors run out.

How this works. ftpalg accepts control connections itself instead of `loop.create_server`,
so that fd exhaustion is answered like any other overload: one spare descriptor is kept
open; when accept() fails with EMFILE/ENFILE, the spare is closed, the waiting connection is
accepted, told `421`, closed, and the spare is reopened. Existing sessions keep their
descriptors and carry on. If even that is impossible, accepting pauses briefly (instead of
spinning on a listener that stays readable).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from ftpalg.core.observations import Refusal
from ftpalg.core.policy import OUT_OF_RESOURCES
from ftpalg.ops.events import Failed, Fault
from ftpalg.ops.observer import Observer
from ftpalg.proxy.refusal import refuse
from ftpalg.proxy.sockets import endpoint

_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_BURST = 64
_PAUSE = 0.1


class Acceptor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_accept: Callable[[socket.socket, Any], None],
        observe: Observer,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.on_accept = on_accept
        self.observe = observe
        self._spare = self._open_spare()
        self._closed = False

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1

    @staticmethod
    def _open_spare() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return -1

    def _ready(self) -> None:
        for _ in range(_BURST):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self._shed(exc)
                else:
                    self.observe(Failed(Fault.ACCEPT, str(exc)))
                return
            conn.setblocking(False)
            self.on_accept(conn, peer)

    def _shed(self, exc: OSError) -> None:
        """Out of descriptors: refuse the waiting connection with a reply, not silence."""
        if self._spare < 0:
            self._spare = self._open_spare()
        if self._spare < 0:  # nothing to free: stop polling a listener that stays readable
            self.loop.remove_reader(self.sock.fileno())
            self.loop.call_later(_PAUSE, self._resume)
            self.observe(Failed(Fault.ACCEPT_PAUSED, str(exc)))
            return
        os.close(self._spare)
        self._spare = -1
        try:
            conn, peer = self.sock.accept()
        except OSError:
            pass
        else:
            refuse(
                conn,
                OUT_OF_RESOURCES,
                Refusal.LIMITS,
                endpoint(peer),
                self.observe,
                "out of file descriptors",
            )
        self._spare = self._open_spare()

    def _resume(self) -> None:
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)
