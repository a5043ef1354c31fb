"""The data relay on loopback TCP: byte-exact, half-close, back-pressure, errors, cleanup.

Layout of every test: ``x <-> a`` and ``b <-> y`` are two loopback connections; the relay
owns ``a`` and ``b``; the test drives the outer ends ``x`` and ``y``. Each test runs on the
stdlib loop and on uvloop, with splice (``zero_copy=True``) and with the recv/send fallback.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import random
import socket
import struct
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from ftpalg.proxy.relay import PIPE_SIZE, SPLICE_AFTER, WAKEUP_BYTES, RelayResult, relay

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
Runner = Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def _run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main())

    yield _run


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
def zero_copy(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(outer, inner): a connected loopback TCP pair, both non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        outer = socket.create_connection(srv.getsockname())
        inner, _ = srv.accept()
    outer.setblocking(False)
    inner.setblocking(False)
    return outer, inner


def four() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    x, a = tcp_pair()
    y, b = tcp_pair()
    return x, a, b, y


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def send_all(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


async def recv_all(sock: socket.socket) -> tuple[int, str]:
    """Read to EOF: (length, sha256 hex)."""
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    total = 0
    buf = bytearray(256 * 1024)
    while True:
        n = await loop.sock_recv_into(sock, buf)
        if n == 0:
            return total, digest.hexdigest()
        digest.update(memoryview(buf)[:n])
        total += n


def sha(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


SIZES = [0, 1, MiB, 64 * MiB]


@pytest.mark.parametrize("size", SIZES, ids=["0B", "1B", "1MiB", "64MiB"])
@pytest.mark.parametrize("way", ["a_to_b", "b_to_a", "both"])
def test_byte_exact(run: Runner, zero_copy: bool, size: int, way: str) -> None:
    up = payload(size, 1) if way in ("a_to_b", "both") else b""
    down = payload(size, 2) if way in ("b_to_a", "both") else b""

    async def main() -> None:
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            results = await asyncio.gather(
                send_all(x, up), send_all(y, down), recv_all(y), recv_all(x)
            )
            assert results[2] == sha(up)
            assert results[3] == sha(down)
            assert await task == RelayResult(len(up), len(down), None)
            assert a.fileno() == -1 and b.fileno() == -1

    run(main)


def test_half_close_keeps_other_direction(run: Runner, zero_copy: bool) -> None:
    """x sends and shuts down its write side; y reads EOF, then still sends 8 MiB to x."""
    late = payload(8 * MiB, 3)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            await send_all(x, b"hello")
            assert await recv_all(y) == sha(b"hello")  # EOF reached y
            assert not task.done()
            reader = asyncio.create_task(recv_all(x))  # 1 MiB need not fit in the buffers
            await loop.sock_sendall(y, late[:MiB])
            await asyncio.sleep(0.05)
            assert not task.done()  # b->a still open after a->b finished
            await send_all(y, late[MiB:])
            assert await reader == sha(late)
            assert await task == RelayResult(5, len(late), None)

    run(main)


def test_back_pressure_bounds_buffering(run: Runner, zero_copy: bool) -> None:
    """While y does not read, x can only push socket buffers + one pipe, not 128 MiB."""
    data = payload(128 * MiB, 4)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            pushed = 0
            deadline = loop.time() + 0.5
            while loop.time() < deadline:
                try:
                    pushed += x.send(data[pushed : pushed + MiB])
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            # four socket buffers (autotuned up to tcp_rmem/tcp_wmem max, counted by truesize
            # on loopback) + one pipe: tens of MiB at most; without back-pressure the relay
            # would take all 128 MiB in these 0.5 s
            assert pushed < 64 * MiB, pushed
            reader = asyncio.create_task(recv_all(y))
            await send_all(x, data[pushed:])
            assert await reader == sha(data)
            y.shutdown(socket.SHUT_WR)
            assert await task == RelayResult(len(data), 0, None)

    run(main)


def test_each_wakeup_moves_a_bounded_amount(
    run: Runner, zero_copy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk transfer gives the loop a turn after at most WAKEUP_BYTES.

    A thread keeps ``x`` saturated (so the relay never runs dry), a reader callback drains
    ``y``, the bytes the relay writes into ``b`` are counted at the system call (``os.splice``
    and ``socket.send`` wrapped), and a ``call_soon`` chain samples that count once per turn
    of the loop. Counting at the receiver instead is at the mercy of the kernel: loopback
    delivery deferred to ksoftirqd on a busy machine now and then hands ``y`` megabytes that
    the relay wrote over many turns. Before the bound a callback moved up to 16 pipes
    (16 MiB; 4 MiB in copy mode) at once, and a control line waited behind all of it."""
    size = 64 * MiB
    x, a, b, y = four()
    b_fd = b.fileno()
    written = 0
    real_splice, real_send = os.splice, socket.socket.send

    def splice(src: int, dst: int, count: int, *args: Any, **kw: Any) -> int:
        nonlocal written
        n = real_splice(src, dst, count, *args, **kw)
        written += n if dst == b_fd else 0
        return n

    def send(sock: socket.socket, data: Any, *args: Any) -> int:
        nonlocal written
        n = real_send(sock, data, *args)
        written += n if sock is b else 0
        return n

    monkeypatch.setattr(os, "splice", splice)
    monkeypatch.setattr(socket.socket, "send", send)

    def push() -> None:
        x.setblocking(True)
        x.sendall(bytes(size))
        x.shutdown(socket.SHUT_WR)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        last = 0
        steps: list[int] = []
        ended = asyncio.Event()

        def sample() -> None:
            nonlocal last
            steps.append(written - last)
            last = written
            if not ended.is_set():
                loop.call_soon(sample)

        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            sender = loop.run_in_executor(None, push)
            loop.call_soon(sample)
            assert await recv_all(y) == sha(bytes(size))
            ended.set()
            await sender
            y.shutdown(socket.SHUT_WR)
            assert await task == RelayResult(size, 0, None)
        assert written == size
        assert max(steps) <= WAKEUP_BYTES, sorted(steps)[-5:]

    run(main)


def test_peer_reset_reports_error_and_closes(run: Runner, zero_copy: bool) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = fd_count()
        x, a, b, y = four()
        task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
        await loop.sock_sendall(x, b"x" * 1000)
        got = 0
        while got < 1000:
            got += len(await loop.sock_recv(y, 4096))
        x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        x.close()  # RST towards a
        result = await asyncio.wait_for(task, 10)
        assert result.a_to_b == 1000 and result.b_to_a == 0
        assert result.error is not None and "reset" in result.error.lower(), result.error
        assert a.fileno() == -1 and b.fileno() == -1
        try:
            rest = await asyncio.wait_for(loop.sock_recv(y, 4096), 5)
        except ConnectionResetError:
            rest = b""
        assert rest == b""  # y sees the relay close b
        y.close()
        assert fd_count() == before

    run(main)


def test_write_to_vanished_peer_is_an_error(run: Runner, zero_copy: bool) -> None:
    """y resets while x keeps sending: the relay stops with an error instead of buffering."""

    async def main() -> None:
        before = fd_count()
        x, a, b, y = four()
        with x:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            y.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            y.close()
            sender = asyncio.create_task(send_all(x, payload(16 * MiB, 5)))
            result = await asyncio.wait_for(task, 10)
            assert result.error is not None, result
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        assert fd_count() == before

    run(main)


def test_cancellation_closes_both_sockets(run: Runner, zero_copy: bool) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = fd_count()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            await loop.sock_sendall(x, b"ping")
            assert await loop.sock_recv(y, 16) == b"ping"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert a.fileno() == -1 and b.fileno() == -1
            assert await asyncio.wait_for(loop.sock_recv(x, 16), 5) == b""
            assert await asyncio.wait_for(loop.sock_recv(y, 16), 5) == b""
        assert fd_count() == before

    run(main)


def test_urgent_data_is_relayed_inline(run: Runner, zero_copy: bool) -> None:
    """TCP splice stops at the urgent mark; the relay must still deliver every byte."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            await loop.sock_sendall(x, b"abc")
            x.send(b"!", socket.MSG_OOB)
            await send_all(x, b"def" * 1000)
            assert await asyncio.wait_for(recv_all(y), 10) == sha(b"abc!" + b"def" * 1000)
            y.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(task, 10) == RelayResult(3004, 0, None)

    run(main)


def test_urgent_data_after_the_switch_to_splice(run: Runner) -> None:
    """The urgent mark in a direction that already splices (past SPLICE_AFTER)."""
    head = payload(SPLICE_AFTER + 5000, 7)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b))
            reader = asyncio.create_task(recv_all(y))
            await loop.sock_sendall(x, head)
            await asyncio.sleep(0.05)  # relayed: the direction has its pipe now
            x.send(b"!", socket.MSG_OOB)
            await send_all(x, b"def" * 1000)
            assert await asyncio.wait_for(reader, 10) == sha(head + b"!" + b"def" * 1000)
            y.shutdown(socket.SHUT_WR)
            result = await asyncio.wait_for(task, 10)
            assert result == RelayResult(len(head) + 3001, 0, None)

    run(main)


def test_small_transfers_make_no_pipe(
    run: Runner, zero_copy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing-sized transfer is copied; a pipe is made only past SPLICE_AFTER, only for the
    direction that carries that much, only with zero_copy."""
    pipes = 0
    real_pipe2 = os.pipe2

    def pipe2(flags: int) -> tuple[int, int]:
        nonlocal pipes
        pipes += 1
        return real_pipe2(flags)

    monkeypatch.setattr(os, "pipe2", pipe2)

    async def transfer(size: int) -> None:
        data = payload(size, size)
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            reader = asyncio.create_task(recv_all(y))
            await send_all(x, data)
            assert await reader == sha(data)
            y.shutdown(socket.SHUT_WR)
            assert await task == RelayResult(size, 0, None)

    async def main() -> None:
        before = fd_count()
        await transfer(SPLICE_AFTER)  # exactly the threshold: all of it copied
        assert pipes == 0
        await transfer(4 * SPLICE_AFTER)
        assert pipes == (1 if zero_copy else 0)
        assert fd_count() == before

    run(main)


def test_many_small_writes_keep_order(run: Runner, zero_copy: bool) -> None:
    chunks = [os.urandom(random.Random(i).randint(1, 3000)) for i in range(500)]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            reader = asyncio.create_task(recv_all(y))
            for i, chunk in enumerate(chunks):
                await loop.sock_sendall(x, chunk)
                if i % 50 == 0:
                    await asyncio.sleep(0)
            x.shutdown(socket.SHUT_WR)
            assert await reader == sha(b"".join(chunks))
            y.shutdown(socket.SHUT_WR)
            assert (await task).error is None

    run(main)


def test_pipe_size_fits_the_unprivileged_maximum() -> None:
    # above fs.pipe-max-size only CAP_SYS_RESOURCE may resize a pipe: ftpalg after --user not
    max_size = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    assert 64 * 1024 <= PIPE_SIZE <= max_size


def test_a_finished_relay_leaves_no_cycles(run: Runner, zero_copy: bool) -> None:
    """A relay's objects (directions, buffers, pipes' owners) are freed by reference counting
    when it ends: one per data connection must not wait for the cyclic GC (sessions/s)."""
    data = payload(SPLICE_AFTER * 2, 5)  # past SPLICE_AFTER: the pipe (or big buffer) too

    async def main() -> None:
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy))
            await asyncio.gather(send_all(x, data), send_all(y, b"back"), recv_all(y), recv_all(x))
            assert await task == RelayResult(len(data), 4, None)

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run(main)
        gc.collect()
        left = [o for o in gc.garbage if type(o).__module__ == "ftpalg.proxy.relay"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
