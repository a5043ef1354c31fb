"""Control latency under a data transfer: NOOP round trips on one session while another
session through the same ftpalg downloads the big file, on the relay and on the kernel plane.

How this works: `measure()` runs `bench/load_busy.py` in the client namespace for the two
ftpalg paths (`ftpalg`: the splice relay carries the download, past its first 256 KiB in
ftpalg's relay worker process, beside the process that answers the NOOPs' session;
`ftpalg-kernel`: nftables forwards it and ftpalg only sees the control lines), each once idle
(`--idle`, the reference) and once under the download, in alternating rounds: the four (path,
load) measurements of a round run in an order rotated from round to round. `summarize()` takes
per path and load the medians over the rounds of p50, p99 and the download's MB/s; the figure
the issue sets a target for is the *added p99*: the relay's p99 under load minus the kernel
plane's p99 under the same load (the CPU contention of client, server and kernel forwarding on
a shared machine is in both; what remains is the time a control line waits behind the relay's
work). `verdict()` and `markdown()` feed `bench.report`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.paths import LABELS, BenchPath
from bench.phases import log
from ftpalg.lab.netns import LabError

PROGRAM = str(Path(__file__).with_name("load_busy.py"))
PATHS = ("ftpalg", "ftpalg-kernel")
LOADS = ("idle", "download")
TARGET_ADDED_P99_US = 1000.0


def _run(p: BenchPath, big: str, count: int, idle: bool) -> dict[str, Any]:
    argv = [sys.executable, PROGRAM, p.host, str(p.port), "--file", big, "--count", str(count)]
    argv += ["--idle"] if idle else []
    argv += ["--pasv"] if p.pasv_only else []
    argv += ["--honour-pasv"] if p.honour_pasv else []
    cp = p.lab.run("cli", argv, timeout=900)
    if cp.returncode != 0:
        raise LabError(f"NOOP under load via {p.name} failed: {cp.stderr.strip()[-1500:]}")
    out: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return out


def measure(paths: list[BenchPath], runs: int, count: int, big: str) -> list[dict[str, Any]]:
    """Every (path, load) pair once per round, in an order rotated per round."""
    pairs = [(p, load) for p in paths if p.name in PATHS for load in LOADS]
    if not pairs:
        return []
    results = []
    for r in range(runs):
        k = r % len(pairs)
        for p, load in pairs[k:] + pairs[:k]:
            res = _run(p, big, count, load == "idle") | {"path": p.name, "load": load, "run": r}
            results.append(res)
            mbps = f"  download {res['download_mbps']:5.0f} MB/s" if load == "download" else ""
            log(
                f"  {p.name:13} {load:8} NOOP p50 {res['p50_us']:6.0f} us  "
                f"p99 {res['p99_us']:7.0f} us  max {res['max_us']:7.0f} us{mbps}"
            )
    return results


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """{"paths": {path: {load: medians}}, "added_p99_us": relay - kernel plane under load}."""
    rows = raw.get("loaded_latency") or []
    out: dict[str, Any] = {"paths": {}, "added_p99_us": None, "added_p99_idle_us": None}
    for path in PATHS:
        for load in LOADS:
            got = [r for r in rows if r["path"] == path and r["load"] == load]
            if not got:
                continue
            entry = {
                key: statistics.median(r[key] for r in got)
                for key in ("p50_us", "p99_us", "p999_us", "max_us")
            }
            entry["p99_runs"] = [r["p99_us"] for r in got]
            entry["n"] = sum(r["n"] for r in got)
            if load == "download":
                entry["download_mbps"] = statistics.median(r["download_mbps"] for r in got)
                entry["transfers"] = sum(r["transfers"] for r in got)
            out["paths"].setdefault(path, {})[load] = entry
    relay, kern = out["paths"].get("ftpalg", {}), out["paths"].get("ftpalg-kernel", {})
    for load, key in (("download", "added_p99_us"), ("idle", "added_p99_idle_us")):
        if load in relay and load in kern:
            out[key] = relay[load]["p99_us"] - kern[load]["p99_us"]
    return out


def verdict(s: dict[str, Any]) -> list[dict[str, Any]]:
    ll = s.get("loaded_latency") or {}
    added = ll.get("added_p99_us")
    if added is None:
        return []
    relay, kern = ll["paths"]["ftpalg"], ll["paths"]["ftpalg-kernel"]
    return [
        {
            "target": "NOOP p99 under load",
            "goal": f"relay - kernel plane < {TARGET_ADDED_P99_US:.0f} us",
            "measured": f"{added:+.0f} us (p99 {relay['download']['p99_us']:.0f} us on the "
            f"relay, {kern['download']['p99_us']:.0f} us on the kernel plane; idle "
            f"{relay['idle']['p99_us']:.0f} / {kern['idle']['p99_us']:.0f} us)",
            "pass": added < TARGET_ADDED_P99_US,
        }
    ]


def markdown(s: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    ll = s.get("loaded_latency") or {}
    if not ll.get("paths"):
        return []
    lines = [
        "",
        "## Control latency under a data transfer",
        "",
        f"{cfg['noops']} NOOP round trips on one logged-in session while a second session "
        f"through the same ftpalg downloads the {cfg['size_mib']} MiB file (EPSV, again and "
        "again until the NOOPs are done), and the same idle; medians over the rounds. On the "
        "relay ftpalg's relay worker process (batch priority, nice 10) carries the download "
        "beside the process that answers the NOOP session; "
        "on the kernel plane nftables forwards it. Added p99 = relay − kernel plane under "
        "the same load.",
        "",
        "| path | load | NOOP p50 µs | NOOP p99 µs | p99.9 µs | max µs | download MB/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in PATHS:
        for load in LOADS:
            e = ll["paths"].get(path, {}).get(load)
            if e is None:
                continue
            mbps = f"{e['download_mbps']:.0f}" if "download_mbps" in e else "–"
            lines.append(
                f"| {LABELS[path]} | {'idle' if load == 'idle' else 'download'} | "
                f"{e['p50_us']:.0f} | {e['p99_us']:.0f} | {e['p999_us']:.0f} | "
                f"{e['max_us']:.0f} | {mbps} |"
            )
    added = [
        f"{ll[key]:+.0f} µs {what}"
        for key, what in (("added_p99_us", "under load"), ("added_p99_idle_us", "idle"))
        if ll.get(key) is not None
    ]
    if added:
        lines += ["", f"Added p99 (relay − kernel plane): {', '.join(added)}."]
    return lines
