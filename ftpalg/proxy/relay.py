"""The data relay: two connected TCP sockets, bytes copied both ways, zero-copy when possible.

How this works: each direction (``a->b``, ``b->a``) is a small state machine driven by
``loop.add_reader``/``loop.add_writer`` callbacks (no asyncio streams, so it runs the same on
the stdlib loop and on uvloop). A direction alternates:

    fill:  splice(src socket -> pipe)   only when the pipe is empty
    drain: splice(pipe -> dst socket)   until the pipe is empty again

It starts without a pipe, with ``recv_into``/``send`` through a small buffer
(``START_BUFFER_SIZE``), and makes its pipe once it has moved more than ``SPLICE_AFTER``
bytes (with the buffer empty): most data connections are small (a listing, a short file),
and a pipe costs four system calls per direction (``pipe2``, ``fcntl``, two ``close``), more
than copying a few KiB; a direction that carries nothing (the command side of a download)
never makes one.

It waits for *either* ``src`` readable (pipe empty) *or* ``dst`` writable (pipe holds bytes),
never both; that is the back-pressure: a slow receiver stops the reads, and at most one pipe
(1 MiB, the default fs.pipe-max-size: 1605 vs 1432 MB/s for 256 KiB on a 1 GiB lab download)
per direction is ever held.

A callback moves at most ``WAKEUP_BYTES`` (512 KiB: every fill and drain is sized to what is
left of it), then yields to the loop; the registration is level-triggered, so it comes back
at once when still ready. Why: the relay shares its event loop with the control sessions,
and a control line that arrives while a callback runs waits for it to end; a NOOP passes the
loop twice (in and out). The old budget (16 fill/drain steps of up to a full pipe) held the
loop for up to 16 MiB, 5–6 ms per callback. The bound trades CPU for that wait, not
throughput (same MB/s within the noise): in the lab (1 GiB EPSV downloads) the relay used
0.32 s of CPU per GiB with the old budget, 0.35 at 1 MiB, 0.39 at 512 KiB, 0.45 at 256 KiB,
0.73 at 64 KiB (more turns of the loop, smaller splices). At 0.39 s/GiB one 512 KiB callback
is ~0.2 ms of CPU, so a NOOP waits ~0.4 ms of loop time behind a transfer in progress,
inside the 1 ms the control plane may lose to one; 256 KiB would halve that for 15 % more CPU
per GiB (``bench/relay_bench.py --wakeup-kib``). End to end (`python -m bench`, phase
``loaded_latency``) a busy relay process also waits for a CPU like any other: on the shared
2-vCPU lab machine it sat on the run queue about as long as it ran during a download.

Subtle rules:

- Why fill only into an *empty* pipe: a pipe's capacity is counted in page slots, not bytes,
  so splicing into a partly filled pipe can fail with EAGAIN although the socket has data;
  waiting for "readable" then would spin. With an empty pipe, EAGAIN means "socket empty".
- Half-close: EOF on ``src`` (splice/recv return 0) and an empty pipe ⇒ ``shutdown(dst,
  SHUT_WR)``; that direction is done, the other keeps running. The relay ends when both are
  done, or at the first error (a reset, EPIPE, a failed shutdown), then both sockets are
  closed and the bytes delivered so far are reported with the error text.
- Urgent (OOB) data: TCP splice stops at the urgent mark and then returns EAGAIN while the
  socket polls readable — or 0 if a FIN follows, which would lose the bytes after the mark.
  So both sockets get ``SO_OOBINLINE``, and when splice returns 0 or returns EAGAIN right
  after a "readable" wake-up, the direction switches to ``recv_into``/``send`` with a
  reusable buffer, which reads through the mark (and confirms a real EOF).
- The same fallback is used when splice fails with EINVAL/ENOSYS (a socket type without
  splice); when no pipe can be made, or with ``zero_copy=False``, the buffer grows to
  ``BUFFER_SIZE`` where the pipe would have been made.
- Every exit path (done, error, cancellation of the awaiting task) removes the readers and
  writers, closes both pipes and both sockets, exactly once.
- Handoff (``relay_worker.py``): with a ``handoff`` a relay that has moved more than
  ``HANDOFF_AFTER`` bytes, with nothing held in either direction, passes both sockets and its
  counts to the relay worker process and from then on only waits for the worker's result, so
  bulk data never shares the control sessions' loop. Small transfers (a listing, most files
  of a session-rate load) end before that and never pay for the message. When the worker
  cannot take it (gone, its queue full), the relay simply goes on here.
- No reference cycles: a direction knows the loop, not its relay (the loop holds the relay's
  ``run`` only while a socket is watched), so a finished relay is freed at once by reference
  counting; one cycle per data connection kept the cyclic GC busy under a high session rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

PIPE_SIZE = 1024 * 1024
BUFFER_SIZE = 256 * 1024
START_BUFFER_SIZE = 16 * 1024  # until SPLICE_AFTER bytes have passed
SPLICE_AFTER = 64 * 1024  # a direction makes its pipe (or grows its buffer) past these
FALLBACK_BUFFER_SIZE = 16 * 1024  # after leaving splice mode (EOF, urgent mark)
WAKEUP_BYTES = 512 * 1024  # bytes one callback moves at most before yielding to the loop
HANDOFF_AFTER = 256 * 1024  # bytes moved (both ways) before a relay goes to the worker
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_IDLE, _READ, _WRITE = 0, 1, 2
_Wake = Callable[["_Direction", bool], None]  # the relay's run(direction, woke_readable)


@dataclass(frozen=True, slots=True)
class RelayResult:
    """Bytes delivered each way, and the first error (None when both sides ended cleanly)."""

    a_to_b: int
    b_to_a: int
    error: str | None


class Handoff(Protocol):
    """Where a relay's sockets go once it is big (the relay worker's side in this process)."""

    def take(
        self,
        socks: tuple[socket.socket, socket.socket],
        sent: tuple[int, int],
        done: tuple[bool, bool],
        zero_copy: bool,
    ) -> asyncio.Future[RelayResult] | None:
        """Send both sockets and the state so far; None when they cannot go (stay here)."""
        ...

    def cancel(self, result: asyncio.Future[RelayResult]) -> None:
        """The relay's task was cancelled: the worker closes its sockets."""
        ...


class _RelayError(Exception):
    pass


def _describe(direction: str, op: str, exc: OSError) -> str:
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{direction} {op}: {text}"


class _Direction:
    """One way of the relay: src -> (pipe | buffer) -> dst."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        src: socket.socket,
        dst: socket.socket,
        zero_copy: bool,
    ) -> None:
        self.loop = loop  # not the relay: no reference cycle, freed without the cyclic GC
        self.name = name
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.sent = 0
        self.pending = 0  # bytes held in the pipe or the buffer
        self.offset = 0  # start of pending bytes in the buffer
        self.eof = False
        self.done = False
        self.waiting = _IDLE
        self.pipe: tuple[int, int] | None = None
        self.zero_copy = zero_copy
        self.upgrade = True  # copying through the small buffer: the pipe comes at SPLICE_AFTER
        self.cap = START_BUFFER_SIZE
        self.view: memoryview | None = memoryview(bytearray(START_BUFFER_SIZE))

    def _upgrade(self) -> None:
        """``SPLICE_AFTER`` bytes moved, the buffer empty: splice through a pipe from now on,
        or copy through a full-size buffer when there is no pipe."""
        self.upgrade = False
        if self.zero_copy:
            self._open_pipe()
        if self.pipe is not None:
            self.view = None
        else:
            self.view = memoryview(bytearray(BUFFER_SIZE))
            self.cap = BUFFER_SIZE
        self.offset = 0

    def _open_pipe(self) -> None:
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # out of fds or pipe quota: copy through a buffer instead
        self.pipe = (r, w)
        try:  # F_SETPIPE_SZ answers with the size it set
            self.cap = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # above fs.pipe-max-size or the user's pipe quota: the default size
            self.cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)

    def _to_buffer_mode(self) -> None:
        """Leave splice mode; bytes still in the pipe move into the buffer first.

        Leaving splice mode mid-stream almost always means EOF (or the rare urgent mark), so
        that buffer is small: a full-size one per direction of every finished relay kept the
        allocator's heap high under many parallel transfers (seen in the soak)."""
        size = BUFFER_SIZE if self.pipe is None else FALLBACK_BUFFER_SIZE
        buf = memoryview(bytearray(max(size, self.pending)))
        if self.pipe is not None:
            r, w = self.pipe
            got = 0
            while got < self.pending:
                got += os.readv(r, [buf[got : self.pending]])
            os.close(r)
            os.close(w)
            self.pipe = None
        self.view = buf
        self.offset = 0
        self.cap = len(buf)

    def close(self) -> None:
        self._stop()
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None

    def _stop(self) -> None:
        """Watch neither socket."""
        if self.waiting == _READ:
            self.loop.remove_reader(self.src_fd)
        elif self.waiting == _WRITE:
            self.loop.remove_writer(self.dst_fd)
        self.waiting = _IDLE

    def _wait(self, kind: int, run: _Wake) -> None:
        """Watch src for reading (_READ) or dst for writing (_WRITE); `run(self, readable)`
        is called when it is ready (the relay's, held by the loop only while watched)."""
        if kind == self.waiting:
            return
        self._stop()
        self.waiting = kind
        if kind == _READ:
            self.loop.add_reader(self.src_fd, run, self, True)
        else:
            self.loop.add_writer(self.dst_fd, run, self, False)

    def _fill(self, woke_readable: bool, limit: int) -> int | None:
        """Read up to limit bytes into the empty pipe/buffer: byte count, 0 at EOF, None when
        nothing to read."""
        size = min(self.cap, limit)
        if self.pipe is not None:
            try:
                n = os.splice(self.src_fd, self.pipe[1], size, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                if not woke_readable:
                    return None
                n = 0  # readable but splice is stuck at an urgent mark: let recv decide
            except OSError as exc:
                if exc.errno not in _NO_SPLICE:
                    raise _RelayError(_describe(self.name, "read", exc)) from exc
                n = 0
            if n > 0:
                return n
            self._to_buffer_mode()  # 0: EOF, or stuck at an urgent mark followed by FIN
            size = min(self.cap, limit)
        assert self.view is not None
        try:
            return self.src.recv_into(self.view[:size])
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _RelayError(_describe(self.name, "read", exc)) from exc

    def _drain(self, limit: int) -> int | None:
        """Write up to limit pending bytes to dst: count written, None when dst is full."""
        size = min(self.pending, limit)
        if self.pipe is not None:
            try:
                n = os.splice(self.pipe[0], self.dst_fd, size, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno not in _NO_SPLICE:
                    raise _RelayError(_describe(self.name, "write", exc)) from exc
                self._to_buffer_mode()
                return self._drain(limit)
            if n <= 0:
                raise _RelayError(f"{self.name} write: splice moved no bytes")
            return n
        assert self.view is not None
        try:
            return self.dst.send(self.view[self.offset : self.offset + size])
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _RelayError(_describe(self.name, "write", exc)) from exc

    def pump(self, woke_readable: bool, run: _Wake) -> bool:
        """Move at most WAKEUP_BYTES, or until blocked; True when this direction is finished."""
        budget = WAKEUP_BYTES
        while budget > 0:
            if self.pending == 0:
                if self.eof:
                    self._stop()
                    try:
                        self.dst.shutdown(socket.SHUT_WR)
                    except OSError as exc:
                        raise _RelayError(_describe(self.name, "shutdown", exc)) from exc
                    self.done = True
                    return True
                if self.upgrade and self.sent > SPLICE_AFTER:
                    self._upgrade()
                n = self._fill(woke_readable, budget)
                woke_readable = False
                if n is None:
                    self._wait(_READ, run)
                    return False
                if n == 0:
                    self.eof = True
                    continue
                self.pending = n
                self.offset = 0
            n = self._drain(budget)
            if n is None:
                self._wait(_WRITE, run)
                return False
            self.pending -= n
            self.offset += n
            self.sent += n
            budget -= n
        self._wait(_READ if self.pending == 0 else _WRITE, run)
        return False


class Relay:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        a: socket.socket,
        b: socket.socket,
        zero_copy: bool,
        handoff: Handoff | None = None,
    ) -> None:
        self.loop = loop
        self.socks = (a, b)
        self.future: asyncio.Future[RelayResult] = loop.create_future()
        self.closed = False
        self.ab = _Direction(loop, "a->b", a, b, zero_copy)
        self.ba = _Direction(loop, "b->a", b, a, zero_copy)
        self.handoff = handoff
        self.remote: asyncio.Future[RelayResult] | None = None  # the worker's, once handed

    def resume(self, sent: tuple[int, int], done: tuple[bool, bool]) -> None:
        """State a relay had before its handoff (the worker's side): bytes already moved,
        directions already finished (their half-close done)."""
        for direction, count, finished in zip((self.ab, self.ba), sent, done, strict=True):
            direction.sent = count
            direction.done = finished

    def start(self) -> None:
        for sock in self.socks:
            if sock.gettimeout() != 0.0:  # the gateway's are non-blocking already: no ioctl
                sock.setblocking(False)
            # Not TCP (odd callers): there is no urgent data to keep inline.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        self.run(self.ab, woke_readable=False)
        self.run(self.ba, woke_readable=False)

    def run(self, direction: _Direction, woke_readable: bool) -> None:
        if self.closed or direction.done:
            return
        try:
            direction.pump(woke_readable, self.run)
        except _RelayError as exc:
            self.finish(str(exc))
            return
        except Exception as exc:  # a bug must not leave fds registered
            self.finish(f"{direction.name}: internal error: {exc!r}")
            return
        if self.ab.done and self.ba.done:
            self.finish(None)
        elif self.handoff is not None and self.ab.sent + self.ba.sent > HANDOFF_AFTER:
            self._hand_off(self.handoff)

    def _hand_off(self, handoff: Handoff) -> None:
        if self.ab.pending or self.ba.pending:
            return  # bytes held here: try again at a later wakeup
        sent, done = (self.ab.sent, self.ba.sent), (self.ab.done, self.ba.done)
        remote = handoff.take(self.socks, sent, done, self.ab.zero_copy)
        if remote is None:
            self.handoff = None  # it will not get better for this relay: carry on here
            return
        self.remote = remote
        self.close()  # the worker holds its own descriptors now
        remote.add_done_callback(self._remote_done)

    def _remote_done(self, remote: asyncio.Future[RelayResult]) -> None:
        if not self.future.done() and not remote.cancelled():
            self.future.set_result(remote.result())

    def finish(self, error: str | None) -> None:
        self.close()
        if not self.future.done():
            self.future.set_result(RelayResult(self.ab.sent, self.ba.sent, error))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ab.close()
        self.ba.close()
        for sock in self.socks:
            sock.close()

    def abandon(self) -> None:
        """The awaiting task is gone (cancelled): close everything, here or in the worker."""
        self.close()
        if self.remote is not None and not self.remote.done() and self.handoff is not None:
            self.handoff.cancel(self.remote)


async def relay(
    a: socket.socket,
    b: socket.socket,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    zero_copy: bool = True,
    handoff: Handoff | None = None,
) -> RelayResult:
    """Relay between two connected non-blocking TCP sockets until both directions end.

    The relay owns ``a`` and ``b``: they are closed when it returns, fails or is cancelled.
    ``zero_copy=False`` forces the ``recv_into``/``send`` path (benchmarks, tests); with a
    ``handoff`` a big relay finishes in the relay worker process.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    state = Relay(loop, a, b, zero_copy, handoff)
    try:
        state.start()
        return await state.future
    finally:
        state.abandon()
