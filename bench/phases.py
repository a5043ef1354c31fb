"""The measurements: bulk throughput, session rate, NOOP latency (idle sessions: `bench.idle`).

How this works: each phase runs `runs` rounds; a round measures every path once, and the
order of the paths rotates from round to round, so each path sees the same machine state on
average (other engineers share this machine). Every single measurement is kept (the JSON has
them all); the report uses medians and the spread between runs.

- Throughput: curl in the client namespace downloads the big file to /dev/null, or uploads
  it from tmpfs, in EPSV (curl's default; PASV through SuSE, which refuses EPSV) or PORT mode
  (`-P - --disable-eprt`). MB/s (10^6 bytes/s) is bytes / curl's `time_total`. The proxy's
  CPU is the CPU time of its process tree (`bench.procstat.tree_cpu`, forked session
  children included) across the transfer, per GiB relayed; the machine-wide busy time of all
  CPUs is kept too (it is the only place the kernel path's cost shows). With `verify`, the
  download goes to a file and both directions are checked by sha256; otherwise the byte
  counts are checked and an untimed sha256-checked download per path runs first.
- Session rate / latency: `bench/load.py` in the client namespace (see there).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench import procstat
from bench.paths import BenchPath
from ftpalg.lab.netns import LabError
from ftpalg.lab.servers import sha256_file

LOAD = str(Path(__file__).with_name("load.py"))
MODES = {"epsv": [], "port": ["-P", "-", "--disable-eprt"]}
COMBOS = [(m, d) for m in MODES for d in ("download", "upload")]


def rotated(paths: list[BenchPath], r: int) -> list[BenchPath]:
    k = r % len(paths)
    return paths[k:] + paths[:k]


def _cpu_before(p: BenchPath) -> float:
    return procstat.tree_cpu(p.proxy_pid) if p.proxy_pid else 0.0


def _cpu_after(p: BenchPath) -> float:
    if not p.proxy_pid:
        return 0.0
    procstat.settle(p.proxy_pid, p.idle_children)
    return procstat.tree_cpu(p.proxy_pid)


def transfer(
    p: BenchPath,
    big: str,
    size: int,
    digest: str,
    mode: str,
    upload: bool,
    verify: bool,
    scratch: Path,
    seq: int,
) -> dict[str, Any]:
    """One timed curl transfer through path p; raises LabError when it fails."""
    argv = ["curl", "-sS", "--max-time", "600", *MODES[mode], *p.curl_extra]
    local = scratch / f"{p.name}-{seq}.bin"
    if upload:
        name = f"up-{seq}.bin"
        argv += ["-T", str(scratch / big), "-w", "%{size_upload} %{time_total}"]
        argv.append(p.url(f"upload/{name}"))
    else:
        out = str(local) if verify else "/dev/null"
        argv += ["-o", out, "-w", "%{size_download} %{time_total}", p.url(big)]
    cpu0, busy0 = _cpu_before(p), procstat.machine_busy()
    cp = p.lab.run("cli", argv, timeout=660)
    busy1 = procstat.machine_busy()
    cpu1 = _cpu_after(p)
    if cp.returncode != 0:
        raise LabError(f"{p.name} {mode} {'up' if upload else 'down'}: {cp.stderr.strip()}")
    nbytes, seconds = int(cp.stdout.split()[0]), float(cp.stdout.split()[1])
    checked = "size"
    try:
        if upload:
            arrived = p.server.uploaded(name)
            if arrived.stat().st_size != size:
                raise LabError(f"{p.name}: upload arrived with {arrived.stat().st_size} bytes")
            if verify:
                if sha256_file(arrived) != digest:
                    raise LabError(f"{p.name}: uploaded file differs (sha256)")
                checked = "sha256"
        elif verify:
            if sha256_file(local) != digest:
                raise LabError(f"{p.name}: downloaded file differs (sha256)")
            checked = "sha256"
    finally:
        local.unlink(missing_ok=True)
        if upload:
            p.server.uploaded(name).unlink(missing_ok=True)
    if nbytes != size:
        raise LabError(f"{p.name}: curl moved {nbytes} of {size} bytes")
    gib = size / 2**30
    return {
        "path": p.name,
        "mode": mode,
        "direction": "upload" if upload else "download",
        "bytes": nbytes,
        "seconds": seconds,
        "mbps": nbytes / seconds / 1e6,
        "proxy_cpu_s_per_gib": (cpu1 - cpu0) / gib if p.proxy_pid else None,
        "machine_cpu_s_per_gib": (busy1 - busy0) / gib,
        "checked": checked,
    }


def throughput(
    paths: list[BenchPath], big: str, size: int, digest: str, runs: int, verify: bool, scratch: Path
) -> list[dict[str, Any]]:
    results = []
    seq = 0
    if not verify:  # one untimed, sha256-checked download per path (also a warm-up)
        for p in paths:
            seq += 1
            transfer(p, big, size, digest, "epsv", False, True, scratch, seq)
    for r in range(runs):
        for mode, direction in COMBOS:
            for p in rotated(paths, r):
                seq += 1
                res = transfer(
                    p, big, size, digest, mode, direction == "upload", verify, scratch, seq
                )
                res["run"] = r
                results.append(res)
                log(f"  {p.name:8} {mode} {direction:8} {res['mbps']:7.0f} MB/s")
    return results


def load(p: BenchPath, what: str, *extra: str, timeout: float = 120) -> dict[str, Any]:
    argv = [sys.executable, LOAD, what, p.host, str(p.port), *extra]
    if p.pasv_only:
        argv.append("--pasv")
    if p.honour_pasv:
        argv.append("--honour-pasv")
    cp = p.lab.run("cli", argv, timeout=timeout)
    if cp.returncode != 0:
        raise LabError(f"load {what} via {p.name} failed: {cp.stderr.strip()[-1500:]}")
    out: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return out


def session_rate(
    paths: list[BenchPath], runs: int, workers: int, duration: float
) -> list[dict[str, Any]]:
    results = []
    for r in range(runs):
        for p in rotated(paths, r):
            cpu0, busy0 = _cpu_before(p), procstat.machine_busy()
            res = load(p, "sessions", "--workers", str(workers), "--duration", str(duration))
            busy1 = procstat.machine_busy()
            cpu1 = _cpu_after(p)
            res |= {"path": p.name, "run": r, "workers": workers}
            if res["sessions"]:  # includes the load generator's own start-up (~0.1 s CPU)
                res["machine_cpu_ms_per_session"] = (busy1 - busy0) * 1000 / res["sessions"]
            if p.proxy_pid and res["sessions"]:
                res["proxy_cpu_ms_per_session"] = (cpu1 - cpu0) * 1000 / res["sessions"]
            results.append(res)
            log(f"  {p.name:8} {res['rate']:7.0f} sessions/s ({res['errors']} errors)")
    return results


def noop_latency(paths: list[BenchPath], runs: int, count: int) -> list[dict[str, Any]]:
    results = []
    for r in range(runs):
        for p in rotated(paths, r):
            res = load(p, "latency", "--count", str(count)) | {"path": p.name, "run": r}
            results.append(res)
            log(f"  {p.name:8} p50 {res['p50_us']:6.0f} us  p99 {res['p99_us']:6.0f} us")
    return results


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
