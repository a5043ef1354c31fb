"""The relay worker: a second process that carries the big relays, so bulk data never runs in
(or waits for) the event loop that answers the control sessions.

How this works. The daemon forks the worker once, before its event loop starts and after it
dropped privileges; the two talk over a `SOCK_SEQPACKET` socket pair (one message per
datagram, descriptors passed with `SCM_RIGHTS`):

    TAKE   id, bytes a->b and b->a so far, finished directions + the two sockets
    CANCEL id                       (the relay's task was cancelled: close its sockets)
    DONE   id, bytes a->b and b->a, the error text if any        (worker -> daemon)

A relay starts in the daemon (`relay.py`); once it has moved `HANDOFF_AFTER` bytes with
nothing held in either direction, it sends TAKE and closes its own descriptors, and its
task then only awaits the DONE. The worker runs the same relay code from the counts it was
given, so `data_finished`, the xferlog and the metrics see one relay with exact totals.

Failure: if the worker is gone (killed, crashed), every relay it held ends with the bytes
counted up to its handoff and the error "relay worker exited", one `relay_worker_failed`
line is logged, and later relays stay in the daemon. A full queue (TAKE would block) keeps
that relay in the daemon too. The worker exits when the daemon closes its end (after the
drain of a SIGTERM) or dies (`PR_SET_PDEATHSIG`); it ignores SIGINT/SIGTERM/SIGHUP itself,
so a Ctrl-C or systemd's SIGTERM to the whole group does not cut transfers the drain waits
for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable

from ftpalg.proxy.relay import Relay, RelayResult

_TAKE, _CANCEL, _DONE = 1, 2, 3
_DONE_A, _DONE_B, _COPY, _ERROR = 1, 2, 4, 8
_HEAD = struct.Struct("<BQQQB")  # op, relay id, bytes a->b, bytes b->a, flags
_MAX_MESSAGE = _HEAD.size + 4096
GONE = "relay worker exited"
LOST_IN_HANDOFF = "relay worker did not receive the connection (out of descriptors)"
_PR_SET_PDEATHSIG = 1


class RelayWorker:
    """The daemon's side: `relay.Handoff` for the relays, DONE fed back to their futures."""

    def __init__(self, sock: socket.socket, pid: int | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.pid = pid
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting: dict[int, tuple[asyncio.Future[RelayResult], tuple[int, int]]] = {}
        self.lost: str | None = None
        self.taken = 0  # relays handed to the worker
        self._on_lost: Callable[[str], None] = lambda why: None

    def start(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[str], None]) -> None:
        self.loop, self._on_lost = loop, on_lost
        loop.add_reader(self.sock.fileno(), self._read)

    def take(
        self,
        socks: tuple[socket.socket, socket.socket],
        sent: tuple[int, int],
        done: tuple[bool, bool],
        zero_copy: bool,
    ) -> asyncio.Future[RelayResult] | None:
        if self.loop is None or self.lost is not None:
            return None
        flags = (_DONE_A if done[0] else 0) | (_DONE_B if done[1] else 0)
        flags |= 0 if zero_copy else _COPY
        head = _HEAD.pack(_TAKE, self.taken + 1, sent[0], sent[1], flags)
        try:
            socket.send_fds(self.sock, [head], [s.fileno() for s in socks])
        except OSError:  # EAGAIN: the worker is behind; anything else: the reader will see
            return None
        self.taken += 1
        future: asyncio.Future[RelayResult] = self.loop.create_future()
        self.waiting[self.taken] = (future, sent)
        return future

    def cancel(self, result: asyncio.Future[RelayResult]) -> None:
        for rid, (future, _) in list(self.waiting.items()):
            if future is result:
                del self.waiting[rid]
                with contextlib.suppress(OSError):
                    self.sock.send(_HEAD.pack(_CANCEL, rid, 0, 0, 0))
                future.cancel()

    def _read(self) -> None:
        while True:
            try:
                message = self.sock.recv(_MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if len(message) < _HEAD.size:
                self._lose(GONE)
                return
            _, rid, a_to_b, b_to_a, flags = _HEAD.unpack_from(message)
            error = message[_HEAD.size :].decode(errors="replace") if flags & _ERROR else None
            future, _ = self.waiting.pop(rid, (None, None))
            if future is not None and not future.done():
                future.set_result(RelayResult(a_to_b, b_to_a, error))

    def _lose(self, why: str) -> None:
        """The worker is gone: its relays end with what was counted before their handoff."""
        self.lost = why
        if self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
        waiting, self.waiting = self.waiting, {}
        for future, (a_to_b, b_to_a) in waiting.values():
            if not future.done():
                future.set_result(RelayResult(a_to_b, b_to_a, why))
        self._on_lost(why)

    def close(self, wait: float = 2.0) -> None:
        """The daemon is done: the worker sees EOF, closes what it holds and exits."""
        if self.sock.fileno() < 0:
            return  # closed already
        if self.loop is not None and self.lost is None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already (a crash)
                self.loop.remove_reader(self.sock.fileno())
        self.lost = self.lost or "closed"
        self.sock.close()
        if self.pid is None:
            return
        with contextlib.suppress(ChildProcessError):  # reaped already: nothing to wait for
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if os.waitpid(self.pid, os.WNOHANG)[0] != 0:
                    return
                time.sleep(0.01)
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


class _Worker:
    """The worker process's side: one relay per TAKE, a DONE for each that ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.relays: dict[int, Relay] = {}
        self.outbox: deque[bytes] = deque()

    def read(self) -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, 2)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if len(message) < _HEAD.size:
                self.stop()
                return
            op, rid, a_to_b, b_to_a, flags = _HEAD.unpack_from(message)
            if op == _TAKE and len(fds) == 2:
                self.start(rid, fds, (a_to_b, b_to_a), flags)
                continue
            for fd in fds:
                os.close(fd)
            if op == _TAKE:  # descriptors lost on the way (the worker out of them): say so
                self.report(rid, RelayResult(a_to_b, b_to_a, LOST_IN_HANDOFF))
                continue
            relay = self.relays.pop(rid, None)
            if op == _CANCEL and relay is not None:
                relay.close()

    def start(self, rid: int, fds: list[int], sent: tuple[int, int], flags: int) -> None:
        a, b = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
        relay = Relay(self.loop, a, b, zero_copy=not flags & _COPY)
        relay.resume(sent, (bool(flags & _DONE_A), bool(flags & _DONE_B)))
        self.relays[rid] = relay
        relay.future.add_done_callback(lambda future: self.finished(rid, future))
        relay.start()

    def finished(self, rid: int, future: asyncio.Future[RelayResult]) -> None:
        if self.relays.pop(rid, None) is None:
            return  # cancelled: nobody waits for it
        self.report(rid, future.result())

    def report(self, rid: int, result: RelayResult) -> None:
        flags = _ERROR if result.error is not None else 0
        head = _HEAD.pack(_DONE, rid, result.a_to_b, result.b_to_a, flags)
        self.send(head + (result.error or "").encode()[:4096])

    def send(self, message: bytes) -> None:
        if not self.outbox:
            try:
                self.sock.send(message)
                return
            except BlockingIOError:
                self.loop.add_writer(self.sock.fileno(), self.flush)
            except OSError:
                return  # the daemon is gone: read() sees EOF and stops
        self.outbox.append(message)

    def flush(self) -> None:
        while self.outbox:
            try:
                self.sock.send(self.outbox[0])
            except BlockingIOError:
                return
            except OSError:
                self.outbox.clear()
                break
            self.outbox.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def stop(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        for relay in self.relays.values():
            relay.close()
        self.relays.clear()
        self.loop.stop()


def serve(sock: socket.socket, new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """The worker's loop (the daemon's kind: `daemon.loop_factory`) until the daemon closes
    its end."""
    loop = new_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the daemon's to handle
        signal.signal(signum, signal.SIG_IGN)
    yield_to_interactive_work()
    sock.setblocking(False)
    worker = _Worker(loop, sock)
    loop.add_reader(sock.fileno(), worker.read)
    try:
        loop.run_forever()
    finally:
        loop.close()
        sock.close()


WORKER_NICE = 10


def yield_to_interactive_work() -> None:
    """Bulk relaying is batch work: it never preempts a process that wakes up (SCHED_BATCH)
    and yields the CPU to normal ones (nice 10), so the control lines (the daemon, the
    servers, the clients) are answered first. Measured on the bench's shared 2-vCPU lab
    (`bench/loaded.py`): NOOP p99 under a relayed download 1.7-2.0 ms with the worker at
    normal priority, 1.1 ms at nice 10, 1.0 ms at nice 19; download MB/s unchanged within
    the noise (the relay is one stage of a pipeline: it runs whenever the others wait)."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)


def fork_worker(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> RelayWorker:
    """Fork the worker (before the daemon's loop exists: no loop state is copied)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends with os._exit; tests run serve() itself
        status = 1
        try:
            ours.close()
            _become_worker(theirs.fileno(), parent)
            serve(theirs, new_loop)
            status = 0
        finally:
            os._exit(status)
    theirs.close()
    return RelayWorker(ours, pid)


def _become_worker(keep: int, parent: int) -> None:  # pragma: no cover - in the forked child
    """Hold no descriptor of the daemon's (listeners, netlink, logs) but stdio and `keep`;
    die with the daemon; leave the stop signals to it (it closes our socket when done)."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def main(argv: list[str]) -> int:
    """`python -m ftpalg.proxy.relay_worker FD`: serve on an inherited socket (tests)."""
    from ftpalg.proxy.daemon import loop_factory  # not at the top: the daemon imports us

    serve(socket.socket(fileno=int(argv[0])), loop_factory())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
