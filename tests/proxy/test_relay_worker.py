"""The relay worker (relay_worker.py): a big relay leaves this process for a real worker
process and ends there with exact counts; small ones stay; cancellation and a dead worker
close everything and say so. Same loopback layout as test_relay.py (x <-> a, b <-> y)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import uvloop

from ftpalg.proxy.relay import HANDOFF_AFTER, RelayResult, relay
from ftpalg.proxy.relay_worker import GONE, LOST_IN_HANDOFF, RelayWorker
from tests.proxy.test_relay import MiB, four, payload, recv_all, send_all

pytestmark = pytest.mark.timeout(120)


class Worker:
    """A worker process started as `python -m ftpalg.proxy.relay_worker FD` (what the daemon
    forks runs the same serve()), and this side's RelayWorker."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftpalg.proxy.relay_worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self.side = RelayWorker(ours)
        self.lost: list[str] = []
        self.status = 0  # how the process is expected to end

    def attach(self) -> RelayWorker:
        self.side.start(asyncio.get_running_loop(), self.lost.append)
        return self.side


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.side.close()
    assert w.proc.wait(10) == w.status  # EOF on its socket: it closes what it holds, exits


def run(main: asyncio.Future[None] | object) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)  # type: ignore[arg-type]


@pytest.mark.parametrize("zero_copy", [True, False], ids=["splice", "copy"])
@pytest.mark.parametrize("size", [HANDOFF_AFTER // 2, 1 * MiB, 32 * MiB])
def test_byte_exact_across_the_handoff(worker: Worker, size: int, zero_copy: bool) -> None:
    down, up = payload(size, 1), payload(size // 3, 2)

    async def main() -> None:
        side = worker.attach()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, zero_copy=zero_copy, handoff=side))
            got = await asyncio.gather(send_all(x, down), send_all(y, up), recv_all(y), recv_all(x))
            assert await task == RelayResult(len(down), len(up), None)
        assert got[2] == (len(down), sha(down)) and got[3] == (len(up), sha(up))
        assert side.taken == (1 if size + size // 3 > HANDOFF_AFTER else 0)

    run(main())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_direction_finished_before_the_handoff_stays_finished(worker: Worker) -> None:
    """The command side of a download half-closes first; the worker must neither read it
    again nor shut it down twice, and counts the bytes it carried before."""
    down = payload(8 * MiB, 3)

    async def main() -> None:
        side = worker.attach()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, handoff=side))
            await send_all(y, b"LIST\r\n")  # b->a ends first: done before any handoff
            assert await recv_all(x) == (6, sha(b"LIST\r\n"))
            got = await asyncio.gather(send_all(x, down), recv_all(y))
            assert await task == RelayResult(len(down), 6, None)
        assert got[1] == (len(down), sha(down)) and side.taken == 1

    run(main())


async def take_through(x: socket.socket, y: socket.socket, data: bytes) -> None:
    """x sends `data` while y reads it all (no reliance on socket buffer sizes)."""
    loop = asyncio.get_running_loop()

    async def read() -> bytes:
        got = b""
        while len(got) < len(data):
            got += await loop.sock_recv(y, len(data) - len(got))
        return got

    _, got = await asyncio.gather(loop.sock_sendall(x, data), read())
    assert got == data


async def both_ends_see_the_close(x: socket.socket, y: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    for sock in (x, y):
        while True:
            try:
                if not await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10):
                    break
            except ConnectionResetError:
                break


def test_cancelling_a_handed_relay_closes_its_sockets_in_the_worker(worker: Worker) -> None:
    async def main() -> None:
        side = worker.attach()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, handoff=side))
            await take_through(x, y, payload(2 * MiB, 4))  # handed off, still open both ways
            assert side.taken == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await both_ends_see_the_close(x, y)
        assert side.waiting == {}

    run(main())


def test_a_dead_worker_ends_its_relays_with_an_error_and_later_ones_stay_here(
    worker: Worker,
) -> None:
    async def main() -> None:
        side = worker.attach()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, handoff=side))
            first = payload(HANDOFF_AFTER + 1, 5)
            await take_through(x, y, first)
            assert side.taken == 1
            worker.proc.send_signal(signal.SIGKILL)
            result = await asyncio.wait_for(task, 10)
            assert result.error == GONE and result.b_to_a == 0
            assert HANDOFF_AFTER < result.a_to_b <= len(first)  # counted up to the handoff
            await both_ends_see_the_close(x, y)  # the worker's copies died with it
        assert worker.lost == [GONE]
        x, a, b, y = four()  # the next big relay runs here, to the end
        with x, y:
            data = payload(4 * MiB, 6)
            task = asyncio.create_task(relay(a, b, handoff=side))
            got = await asyncio.gather(send_all(x, data), send_all(y, b""), recv_all(y))
            assert await task == RelayResult(len(data), 0, None)
            assert got[2] == (len(data), sha(data)) and side.taken == 1

    worker.status = -signal.SIGKILL
    run(main())


def test_the_worker_ignores_stop_signals_until_the_daemon_lets_go(worker: Worker) -> None:
    """systemd's SIGTERM reaches every process of the unit: the worker keeps carrying the
    transfers the daemon's drain waits for, and exits once the daemon closes its end."""
    down = payload(4 * MiB, 7)

    async def main() -> None:
        side = worker.attach()
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, handoff=side))
            await take_through(x, y, down[: 1 * MiB])  # its end came through the worker
            assert side.taken == 1
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                worker.proc.send_signal(signum)
            await asyncio.sleep(0.1)
            rest = down[1 * MiB :]
            got = await asyncio.gather(send_all(x, rest), send_all(y, b""), recv_all(y))
            assert await task == RelayResult(len(down), 0, None)
            assert got[2] == (len(rest), sha(rest))

    run(main())


def test_a_worker_out_of_descriptors_reports_the_relay_it_could_not_take(
    worker: Worker,
) -> None:
    """The sockets of a TAKE are lost when the worker has no descriptor left for them: the
    relay still ends, with its counts so far and an error that says why."""

    async def main() -> None:
        side = worker.attach()
        x, a, b, y = four()
        with x, y:  # a first relay proves the worker serves
            task = asyncio.create_task(relay(a, b, handoff=side))
            data = payload(HANDOFF_AFTER + 1, 8)
            got = await asyncio.gather(send_all(x, data), send_all(y, b""), recv_all(y))
            assert await task == RelayResult(len(data), 0, None) and side.taken == 1
            assert got[2] == (len(data), sha(data))
        held = len(os.listdir(f"/proc/{worker.proc.pid}/fd"))
        resource.prlimit(worker.proc.pid, resource.RLIMIT_NOFILE, (held, held))
        x, a, b, y = four()
        with x, y:
            task = asyncio.create_task(relay(a, b, handoff=side))
            first = payload(HANDOFF_AFTER + 1, 9)
            await take_through(x, y, first)
            result = await asyncio.wait_for(task, 10)
            assert result == RelayResult(len(first), 0, LOST_IN_HANDOFF) and side.taken == 2
            await both_ends_see_the_close(x, y)
        assert side.lost is None  # the worker itself carries on

    run(main())
