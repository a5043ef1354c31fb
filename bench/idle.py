"""Concurrency: thousands of idle control sessions through ftpalg, and its memory per session.

How this works: a lab of its own (closed gateway, ftpalg transparent with
`--max-sessions 20000`, pyftpdlib as the server: one process, `max_cons` raised; vsftpd would
fork 10,000 processes). Both daemons get a high open-file limit with `prlimit --pid` right
after they start (10,000 sessions are 20,000 sockets in ftpalg), so nothing else started by
the bench inherits a huge limit. Raising a hard limit needs CAP_SYS_RESOURCE; where that is
missing (some containers), ftpalg keeps its inherited limit and the session count is capped
to what fits in it (two sockets per session plus the fds ftpalg already holds), and the
result says so (`limited_by`). `bench/load.py idle` in the client namespace opens the
sessions (at most 200 handshakes in flight) and waits for every banner; ftpalg's RSS is read
before (after a warm-up of a few sessions, opened and closed, so lazily built state is
already counted) and once all banners are in; then every session sends NOOP and must get
its 200. RSS per session = (RSS with the sessions open - RSS before) / sessions. pyftpdlib's
RSS is reported too, but it is the server's memory, not ftpalg's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from bench import procstat
from bench.phases import LOAD, log
from ftpalg.lab.alg import start_ftpalg
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, LabError
from ftpalg.lab.servers import start_pyftpdlib

NOFILE = 65536


def _prlimit(pid: int) -> int:
    """Raise pid's open-file limit to NOFILE if allowed; return its soft limit afterwards."""
    subprocess.run(
        ["prlimit", f"--pid={pid}", f"--nofile={NOFILE}:{NOFILE}"], capture_output=True, check=False
    )
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 1024


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class IdleClients:
    """`load.py idle` in the client namespace, driven line by line over its stdin/stdout."""

    def __init__(self, lab: Lab, host: str, count: int) -> None:
        argv = [sys.executable, LOAD, "idle", host, "21", "--count", str(count)]
        self.proc = lab.popen(
            "cli",
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise LabError(f"idle load generator ended: {err[-1500:]}")
        out: dict[str, Any] = json.loads(line)
        return out

    def send(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.event()

    def finish(self) -> None:
        self.send("quit")
        self.proc.wait(timeout=60)


def concurrency(requested: int, warmup: int = 50) -> dict[str, Any]:
    """Open `requested` idle sessions through ftpalg; banners, NOOPs and RSS per session."""
    with Lab(prefix="fbc") as lab:
        apply_closed_gateway(lab)
        lab.sysctl("cli", "net.ipv4.ip_local_port_range", "15000 60999")
        server = start_pyftpdlib(lab, max_cons=requested + 1000)
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--max-sessions", "20000"])
        pid, spid = alg.proc.pid, server.proc.pid
        limit = _prlimit(pid)
        _prlimit(spid)
        host = str(server.address)
        warm = IdleClients(lab, host, warmup)
        if warm.event()["ok"] != warmup:
            raise LabError("warm-up sessions through ftpalg failed")
        warm.send("noop")
        warm.finish()
        time.sleep(1.0)  # the warm-up sessions end on both sides
        base_fds = _fds(pid)
        count = min(requested, (limit - base_fds - 32) // 2)  # 2 sockets a session, spare 32
        limited = f"ftpalg's RLIMIT_NOFILE {limit} (not raisable here)" if count < requested else ""
        rss0, srss0, cpu0 = procstat.rss_kib(pid), procstat.rss_kib(spid), procstat.tree_cpu(pid)
        clients = IdleClients(lab, host, count)
        banners = clients.event()
        cpu1 = procstat.tree_cpu(pid)
        rss1, srss1 = procstat.rss_kib(pid), procstat.rss_kib(spid)
        log(
            f"  {banners['ok']} banners in {banners['seconds']:.1f} s, ftpalg RSS "
            f"{rss0} -> {rss1} KiB"
        )
        noop = clients.send("noop")
        rss2 = procstat.rss_kib(pid)
        fds = _fds(pid)
        clients.finish()
        alive = alg.proc.poll() is None
        opened = banners["ok"]
        return {
            "sessions": count,
            "requested": requested,
            "fd_limit": limit,
            "limited_by": limited,
            "banners_ok": opened,
            "banners_failed": banners["failed"],
            "first_error": banners["first_error"],
            "open_seconds": banners["seconds"],
            "noop_ok": noop["ok"],
            "noop_failed": noop["failed"],
            "noop_seconds": noop["seconds"],
            "ftpalg_fds_before": base_fds,
            "ftpalg_fds_open": fds,
            "ftpalg_rss_before_kib": rss0,
            "ftpalg_rss_open_kib": rss1,
            "ftpalg_rss_after_noop_kib": rss2,
            "rss_per_session_kib": (rss1 - rss0) / opened if opened else None,
            "rss_per_session_after_noop_kib": (rss2 - rss0) / opened if opened else None,
            "ftpalg_cpu_ms_per_session_open": (cpu1 - cpu0) * 1000 / opened if opened else None,
            "server_rss_delta_kib": srss1 - srss0,
            "ftpalg_survived": alive,
        }


def verdict(c: dict[str, Any] | None, kib_per_session: float) -> list[dict[str, Any]]:
    """The report's verdict line for the result of `concurrency()` (none without one)."""
    if not c:
        return []
    all_ok = c["banners_ok"] == c["sessions"] == c["noop_ok"]
    per = c["rss_per_session_kib"] or 0.0
    capped = f" (of {c['requested']} asked: {c['limited_by']})" if c["limited_by"] else ""
    return [
        {
            "target": "idle sessions",
            "goal": f"{c['requested']} banners + NOOPs, <= {kib_per_session:.0f} KiB RSS each",
            "measured": f"{c['banners_ok']} banners{capped}, {c['noop_ok']} NOOPs, "
            f"{per:.1f} KiB/session",
            "pass": all_ok and per <= kib_per_session,
        }
    ]


def _fmt(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def markdown(c: dict[str, Any] | None) -> list[str]:
    """The report's section for the result of `concurrency()` (none without one)."""
    if not c:
        return []
    return [
        "",
        "## Idle sessions through ftpalg",
        "",
        "pyftpdlib server (one process); RSS = ftpalg's resident memory."
        + (
            f" Only {c['sessions']} of the {c['requested']} sessions asked for fit: "
            f"{c['limited_by']}, and raising it needs CAP_SYS_RESOURCE, which this "
            "machine does not grant (10,000 sessions are 20,000 sockets in ftpalg)."
            if c["limited_by"]
            else ""
        ),
        "",
        "| sessions | banners | NOOP answered | open time s | ftpalg fds | "
        "ftpalg RSS before → open MiB | KiB/session | after NOOP KiB/session | "
        "ftpalg CPU ms/session open | server RSS Δ MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {c['sessions']} | {c['banners_ok']} | {c['noop_ok']} | "
        f"{c['open_seconds']:.1f} | {c['ftpalg_fds_open']} | "
        f"{c['ftpalg_rss_before_kib'] / 1024:.1f} → {c['ftpalg_rss_open_kib'] / 1024:.1f}"
        f" | {_fmt(c['rss_per_session_kib'], '.1f')} | "
        f"{_fmt(c['rss_per_session_after_noop_kib'], '.1f')} | "
        f"{_fmt(c['ftpalg_cpu_ms_per_session_open'])} | "
        f"{c['server_rss_delta_kib'] / 1024:.1f} |",
    ]
