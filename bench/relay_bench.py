"""Relay throughput on loopback: splice through a pipe vs the recv_into/send fallback.

    .venv/bin/python bench/relay_bench.py [--size-mib 1024] [--repeat 3] [--loop uvloop]

A child process sends ``--size-mib`` MiB into the relay and receives them on the far side
(two threads, blocking sockets); this process only runs ``ftpalg.proxy.relay.relay``. Reported
per mode: wall-clock MB/s (10^6 bytes) and the relay process's CPU seconds per GiB
(user + system, from getrusage), median over the repeats. Modes alternate within a run so
they see the same machine state; compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

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


async def one_run(size: int, zero_copy: bool) -> tuple[float, float]:
    """(MB/s, relay CPU s/GiB) for one transfer of ``size`` bytes."""
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
    result = await relay(a, b, loop=loop, zero_copy=zero_copy)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out, _ = child.communicate(timeout=60)
    if result.error or result.a_to_b != size or int(out) != size:
        raise SystemExit(f"bad run: {result} child received {out.strip()}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return size / wall / 1e6, cpu / (size / 2**30)


async def main_async(size: int, repeat: int) -> dict[str, list[tuple[float, float]]]:
    runs: dict[str, list[tuple[float, float]]] = {"splice": [], "recv/send": []}
    await one_run(16 << 20, True)  # warm-up
    for _ in range(repeat):
        runs["splice"].append(await one_run(size, True))
        runs["recv/send"].append(await one_run(size, False))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes per run, in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (median shown)")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    args = parser.parse_args()
    size = args.size_mib << 20
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runs = runner.run(main_async(size, args.repeat))
    print(f"relay on loopback, {args.size_mib} MiB x {args.repeat}, loop={args.loop}")
    print(f"{'mode':<10} {'MB/s':>8} {'CPU s/GiB':>10}   runs (MB/s)")
    for mode, values in runs.items():
        rate = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        detail = ", ".join(f"{v[0]:.0f}" for v in values)
        print(f"{mode:<10} {rate:>8.0f} {cpu:>10.2f}   {detail}")


if __name__ == "__main__":
    main()
