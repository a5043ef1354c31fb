"""What a pinhole costs: set/map elements through ftpalg.kernel.nfnl vs the nft command.

    sudo .venv/bin/python -m bench.pinhole_bench [--single 2000] [--txn-repeat 20]
                                                 [--nft-txn-repeat 5] [--nft-each 50]

Builds its own network namespace (``ftpalg-bench-<hex>``, deleted at the end) with a
``ipv4_addr . ipv4_addr . inet_service : mark`` map with timeouts, the shape of a passive
pinhole, and measures per element:

- ``nfnl add`` / ``nfnl remove``: one transaction per element (``SetElements.add/remove``);
- ``nfnl txn add`` / ``nfnl txn remove``: transactions of ``--txn-size`` elements, per element;
- ``nft -f - txn``: the same transaction as one ``nft -f -`` process, per element;
- ``nft each``: one ``nft add element`` / ``nft delete element`` process per element.

CPU is this process's CPU time (``time.process_time``: user + system, which includes the
kernel's transaction work, done inside ``send``) plus, for nft, the children's
(``RUSAGE_CHILDREN``). nft runs directly inside the namespace (``setns`` before ``exec``, no
``ip netns exec`` wrapper). Kernel work deferred to other contexts (RCU callbacks, set garbage
collection) is not counted anywhere. Median and p99 over the samples (nearest rank; with few
samples p99 is the maximum). Numbers to compare within one run, no pass/fail.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address

from ftpalg.kernel import nft
from ftpalg.kernel.nfnl import ElementOp, Mark, Port, SetElements

TABLE = "ftpalg"
MAP = "pasv4"
RULESET = f"""\
table inet {TABLE} {{
\tmap {MAP} {{
\t\ttype ipv4_addr . ipv4_addr . inet_service : mark; flags timeout; timeout 60s;
\t}}
}}
"""
SERVER = IPv4Address("198.51.100.10")
_CLONE_NEWNET = 0x40000000


@dataclass
class Row:
    method: str
    samples: int
    per: str  # what one sample is divided by
    cpu: list[float]  # seconds per element
    wall: list[float]


def _key(i: int) -> tuple[IPv4Address, IPv4Address, Port]:
    """Distinct passive-pinhole keys: clients in 192.0.2.0/24, ports 1024.."""
    return IPv4Address(int(IPv4Address("192.0.2.1")) + i % 250), SERVER, Port(1024 + i // 250)


def _nft_key(i: int) -> str:
    client, server, port = _key(i)
    return f"{client} . {server} . {int(port)}"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(step: Callable[[], None], per: int = 1, children: bool = False) -> tuple[float, float]:
    """(CPU s, wall s) of ``step``, divided by ``per``; with ``children`` the CPU includes
    the waited-for child processes (getrusage stays outside the window otherwise)."""
    child0 = _children_cpu() if children else 0.0
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    step()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    if children:
        cpu += _children_cpu() - child0
    return cpu / per, wall / per


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


class Netns:
    """A private namespace for the run, deleted by :meth:`delete`."""

    def __init__(self) -> None:
        self.name = f"ftpalg-bench-{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.path = f"/run/netns/{self.name}"

    def enter(self) -> None:
        """For ``preexec_fn``: move the child into the namespace before it runs nft."""
        fd = os.open(self.path, os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            os._exit(127)
        os.close(fd)

    def nft(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(
            ["nft", *args],
            input=stdin,
            text=True,
            check=True,
            capture_output=True,
            preexec_fn=self.enter,
        )

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


def bench_nfnl(el: SetElements, single: int, txn_size: int, txn_repeat: int) -> list[Row]:
    keys = [_key(i) for i in range(max(single, txn_size))]
    value = (Mark(5),)
    for i in range(100):  # warm up: code paths, the set's hash table, the probe
        el.add(MAP, keys[i], value, timeout_ms=60_000)
        el.remove(MAP, keys[i])
    add = Row("nfnl add", single, "element", [], [])
    for k in keys[:single]:
        cpu, wall = _measure(partial(el.add, MAP, k, value, timeout_ms=60_000))
        add.cpu.append(cpu)
        add.wall.append(wall)
    rm = Row("nfnl remove", single, "element", [], [])
    for k in keys[:single]:
        cpu, wall = _measure(partial(el.remove, MAP, k))
        rm.cpu.append(cpu)
        rm.wall.append(wall)
    txn_add = Row(f"nfnl txn add ({txn_size})", txn_repeat, "txn/elements", [], [])
    txn_rm = Row(f"nfnl txn remove ({txn_size})", txn_repeat, "txn/elements", [], [])
    batch = keys[:txn_size]
    for _ in range(txn_repeat):
        # building the ElementOps (encoding the keys) is part of the measured cost
        cpu, wall = _measure(
            lambda: el.apply(ElementOp.add(MAP, k, value, timeout_ms=60_000) for k in batch),
            txn_size,
        )
        txn_add.cpu.append(cpu)
        txn_add.wall.append(wall)
        cpu, wall = _measure(lambda: el.apply(ElementOp.remove(MAP, k) for k in batch), txn_size)
        txn_rm.cpu.append(cpu)
        txn_rm.wall.append(wall)
    return [add, rm, txn_add, txn_rm]


def bench_nft(ns: Netns, txn_size: int, txn_repeat: int, each: int) -> list[Row]:
    elems = [f"{_nft_key(i)} : 0x5" for i in range(txn_size)]
    add_script = "".join(f"add element inet {TABLE} {MAP} {{ {e} }}\n" for e in elems)
    del_script = "".join(
        f"delete element inet {TABLE} {MAP} {{ {_nft_key(i)} }}\n" for i in range(txn_size)
    )
    txn_add = Row(f"nft -f - txn add ({txn_size})", txn_repeat, "txn/elements", [], [])
    txn_rm = Row(f"nft -f - txn delete ({txn_size})", txn_repeat, "txn/elements", [], [])
    for _ in range(txn_repeat):
        cpu, wall = _measure(lambda: ns.nft("-f", "-", stdin=add_script), txn_size, True)
        txn_add.cpu.append(cpu)
        txn_add.wall.append(wall)
        cpu, wall = _measure(lambda: ns.nft("-f", "-", stdin=del_script), txn_size, True)
        txn_rm.cpu.append(cpu)
        txn_rm.wall.append(wall)
    add = Row("nft each add", each, "element", [], [])
    rm = Row("nft each delete", each, "element", [], [])
    for i in range(each):
        spec = f"{{ {_nft_key(i)} : 0x5 }}"
        cpu, wall = _measure(partial(ns.nft, "add", "element", "inet", TABLE, MAP, spec), 1, True)
        add.cpu.append(cpu)
        add.wall.append(wall)
    for i in range(each):
        spec = f"{{ {_nft_key(i)} }}"
        cpu, wall = _measure(
            partial(ns.nft, "delete", "element", "inet", TABLE, MAP, spec), 1, True
        )
        rm.cpu.append(cpu)
        rm.wall.append(wall)
    return [txn_add, txn_rm, add, rm]


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def report(rows: list[Row]) -> str:
    head = ("method", "samples", "CPU med µs", "CPU p99 µs", "wall med µs", "wall p99 µs", "ops/s")
    lines = [head, tuple("-" * len(h) for h in head)]
    for row in rows:
        wall_med = statistics.median(row.wall)
        lines.append(
            (
                row.method,
                str(row.samples),
                _us(statistics.median(row.cpu)),
                _us(_p99(row.cpu)),
                _us(wall_med),
                _us(_p99(row.wall)),
                f"{1 / wall_med:,.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--single", type=int, default=2000, help="single-element operations")
    parser.add_argument("--txn-size", type=int, default=1000, help="elements per transaction")
    parser.add_argument("--txn-repeat", type=int, default=20, help="nfnl transactions")
    parser.add_argument("--nft-txn-repeat", type=int, default=5, help="nft -f - transactions")
    parser.add_argument("--nft-each", type=int, default=50, help="one nft process per element")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("pinhole_bench: needs root (network namespace, nftables)", file=sys.stderr)
        return 2
    ns = Netns()
    try:
        nft.apply(RULESET, netns=ns.name)
        with SetElements(TABLE, netns=ns.name) as el:
            rows = bench_nfnl(el, args.single, args.txn_size, args.txn_repeat)
        rows += bench_nft(ns, args.txn_size, args.nft_txn_repeat, args.nft_each)
    finally:
        ns.delete()
    print(
        f"kernel {os.uname().release}, {os.cpu_count()} CPUs, map {MAP}: "
        "ipv4_addr . ipv4_addr . inet_service : mark, flags timeout"
    )
    print(report(rows))
    print("per element; txn rows: one sample = one transaction / its size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
