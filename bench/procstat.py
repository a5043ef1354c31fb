"""CPU time and memory of a process tree, and of the whole machine, read from /proc.

How this works: `tree_cpu(pid)` scans /proc once, builds the parent -> children map and sums
utime + stime of `pid` and every live descendant, plus the root's cutime + cstime (children it
has already reaped: a forking proxy's finished session processes). The difference of two
readings is the CPU the tree used in between, as long as the root reaps its children (every
daemon here does). A child that exited but is not reaped yet is still in /proc as a zombie
with its times, so nothing is lost in between. `settle()` waits until a forking proxy's
session children are gone so the "after" reading includes them. `machine_busy()` is the busy
time of all CPUs from /proc/stat (everything but idle and iowait): the kernel path's cost shows
up only there (softirq), and it includes the client, the server and other users of the machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stat:
    pid: int
    ppid: int
    self_ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime (reaped children)


def _stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    # fields[0] is state (field 3); utime is field 14 -> index 11
    return Stat(
        pid, int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
    )


def _all_stats() -> dict[int, Stat]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            out[st.pid] = st
    return out


def descendants(pid: int, stats: dict[int, Stat] | None = None) -> list[int]:
    stats = stats if stats is not None else _all_stats()
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by pid, its live descendants and its reaped children."""
    stats = _all_stats()
    root = stats.get(pid)
    if root is None:
        return 0.0
    ticks = root.self_ticks + root.child_ticks
    for child in descendants(pid, stats):
        st = stats[child]
        ticks += st.self_ticks + st.child_ticks
    return ticks / TICK


def settle(pid: int, max_children: int, timeout: float = 3.0) -> None:
    """Wait until pid has at most `max_children` descendants (session children gone)."""
    deadline = time.monotonic() + timeout
    while len(descendants(pid)) > max_children and time.monotonic() < deadline:
        time.sleep(0.02)


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in [pid, *descendants(pid)] if os.path.exists(f"/proc/{p}"))


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs; not idle, not iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK
