"""Relay throughput on loopback: splice through a pipe vs the recv_into/send fallback, and
how long the relay keeps the event loop to itself.

    .venv/bin/python bench/relay_bench.py [--size-mib 1024] [--repeat 3] [--loop uvloop]
        [--wakeup-kib 64,256,1024,16384]

A child process sends ``--size-mib`` MiB into the relay and receives them on the far side
(two threads, blocking sockets); this process only runs ``ftpalg.proxy.relay.relay``. Reported
per mode: wall-clock MB/s (10^6 bytes) and the relay process's CPU seconds per GiB
(user + system, from getrusage), median over the repeats; and the *turns*: a ``call_soon``
chain runs once per turn of the loop during the transfer, and the time between two of its
calls is how long any other callback (a control line) could have waited behind the relay:
the max, and the time-weighted p99 (99 % of the transfer's time lies in turns no longer than
that; a plain p99 over turns would count the many empty ones), in µs, as wall-clock time
(what a control line waits, including time the process is not on a CPU) and as this thread's
CPU time (the relay's own work per turn). ``--wakeup-kib``
runs splice mode once per value of ``relay.WAKEUP_BYTES`` instead (the bytes one callback
moves at most; 16384 is about the old budget of 16 pipes per callback). Modes alternate
within a run so they see the same machine state; compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from ftpalg.proxy import relay as relay_module
from ftpalg.proxy.relay import relay

CHILD = r"""
import socket, sys, threading
size, p1, p2 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
src = socket.create_connection(("127.0.0.1", p1))
dst = socket.create_connection(("127.0.0.1", p2))
got = 0
def receive():
    global got
    buf = bytearray(1 << 20)
    while n := dst.recv_into(buf):
        got += n
    dst.shutdown(socket.SHUT_WR)
t = threading.Thread(target=receive)
t.start()
chunk = memoryview(bytes(range(256)) * 4096)  # 1 MiB
left = size
while left:
    left -= src.send(chunk[: min(left, len(chunk))])
src.shutdown(socket.SHUT_WR)
while src.recv(4096):
    pass
t.join()
print(got)
"""


def _accepting_pair() -> tuple[socket.socket, socket.socket]:
    return socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))


Run = tuple[float, ...]


@contextlib.contextmanager
def turn_gaps(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[list[float], list[float]]]:
    """Wall and CPU (this thread) seconds between consecutive turns of the loop."""
    wall: list[float] = []
    cpu: list[float] = []
    last = time.perf_counter(), time.thread_time()
    running = True

    def tick() -> None:
        nonlocal last
        now = time.perf_counter(), time.thread_time()
        wall.append(now[0] - last[0])
        cpu.append(now[1] - last[1])
        last = now
        if running:
            loop.call_soon(tick)

    loop.call_soon(tick)
    try:
        yield wall, cpu
    finally:
        running = False


async def one_run(size: int, zero_copy: bool) -> Run:
    """MB/s, relay CPU s/GiB, and the turns' p99 (time-weighted) and max in µs, wall and CPU."""
    loop = asyncio.get_running_loop()
    l1, l2 = _accepting_pair()
    with l1, l2:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(size),
                str(l1.getsockname()[1]),
                str(l2.getsockname()[1]),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        a, _ = l1.accept()
        b, _ = l2.accept()
    a.setblocking(False)
    b.setblocking(False)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    with turn_gaps(loop) as (wall_gaps, cpu_gaps):
        result = await relay(a, b, loop=loop, zero_copy=zero_copy)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out, _ = child.communicate(timeout=60)
    if result.error or result.a_to_b != size or int(out) != size:
        raise SystemExit(f"bad run: {result} child received {out.strip()}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    turns = [f(g) * 1e6 for g in (wall_gaps, cpu_gaps) for f in (weighted_p99, max)]
    return (size / wall / 1e6, cpu / (size / 2**30), *turns)


def weighted_p99(gaps: list[float]) -> float:
    """The turn length that 99 % of the wall time lies in turns no longer than: a control line
    arriving at a random moment lands in a turn this long or shorter, 99 times in 100."""
    total = sum(gaps)
    seen = 0.0
    for gap in sorted(gaps):
        seen += gap
        if seen >= 0.99 * total:
            return gap
    return 0.0


async def main_async(size: int, repeat: int, wakeup_kib: list[int]) -> dict[str, list[Run]]:
    """Alternate the modes (or the WAKEUP_BYTES values, splice mode) within each repeat."""
    modes = [(f"splice {k} KiB", True, k) for k in wakeup_kib] or [
        ("splice", True, 0),
        ("recv/send", False, 0),
    ]
    runs: dict[str, list[Run]] = {name: [] for name, _, _ in modes}
    default = relay_module.WAKEUP_BYTES
    await one_run(16 << 20, True)  # warm-up
    try:
        for r in range(repeat):
            for name, zero_copy, kib in modes[r % len(modes) :] + modes[: r % len(modes)]:
                relay_module.WAKEUP_BYTES = kib << 10 if kib else default
                runs[name].append(await one_run(size, zero_copy))
    finally:
        relay_module.WAKEUP_BYTES = default
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes per run, in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (median shown)")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--wakeup-kib", default="", help="comma-separated WAKEUP_BYTES in KiB")
    args = parser.parse_args()
    wakeup_kib = [int(k) for k in args.wakeup_kib.split(",") if k]
    size = args.size_mib << 20
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runs = runner.run(main_async(size, args.repeat, wakeup_kib))
    print(f"relay on loopback, {args.size_mib} MiB x {args.repeat}, loop={args.loop}")
    print("turns: p99 (time-weighted) / max in us, wall clock and this thread's CPU time")
    head = f"{'mode':<16} {'MB/s':>6} {'CPU s/GiB':>9} {'wall p99/max':>13} {'CPU p99/max':>13}"
    print(head + "   runs (MB/s)")
    for mode, values in runs.items():
        rate, cpu, w99, wmax, c99, cmax = map(statistics.median, zip(*values, strict=True))
        detail = ", ".join(f"{v[0]:.0f}" for v in values)
        turns = f"{w99:>6.0f}/{wmax:<6.0f} {c99:>6.0f}/{cmax:<6.0f}"
        print(f"{mode:<16} {rate:>6.0f} {cpu:>9.2f} {turns}   {detail}")


if __name__ == "__main__":
    main()
