"""`python -m bench`: build the labs, run every measurement, write JSON, markdown and charts.

How this works: `bench/setup.sh` first installs what is missing (SuSE ftp-proxy from apt,
proftpd + mod_proxy unpacked privately). Scratch space and every server's work directory go
on tmpfs (/dev/shm), so the big file is written once, hard-linked into each server root and
never touches the disk; uploads land on tmpfs and are deleted after each run. One lab per path
(`bench.paths`), then the phases in order: throughput, session rate, NOOP latency (alternating
rounds, `bench.phases`), NOOP latency under a download on both ftpalg data planes
(`bench.loaded`), idle sessions (`bench.idle`). While the ftpalg lab still stands,
every missed target's workload is run again under py-spy (`bench.profile`). Outputs: all raw
runs in bench/results/bench-<time>.json, the summary in bench/summary.json, the report in
docs/benchmarks.md with charts in docs/img/. `--quick` (16 MiB, one round, short runs, 200
idle sessions) keeps the command working in the test suite and writes under bench/results/
unless told otherwise. Every lab is closed and the scratch directory removed on any exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import charts, idle, loaded, machine, paths, phases, procstat, profile, report
from ftpalg.lab.servers import make_file

REPO = Path(__file__).resolve().parents[1]
FULL = {
    "size_mib": 1024,
    "runs": 5,
    "workers": 8,
    "duration": 5.0,
    "noops": 2000,
    "idle_sessions": 10000,
}
PHASES = ("throughput", "sessions", "latency", "loaded_latency", "idle")
QUICK = {
    "size_mib": 16,
    "runs": 1,
    "workers": 4,
    "duration": 1.0,
    "noops": 200,
    "idle_sessions": 200,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny version (for the test suite)")
    p.add_argument("--paths", default=",".join(paths.PATHS), help="comma-separated subset")
    p.add_argument("--skip", default="", help="phases to skip: " + ",".join(PHASES))
    for key, value in FULL.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    p.add_argument("--results-dir", type=Path, default=REPO / "bench/results")
    p.add_argument("--summary", type=Path, help="default bench/summary.json")
    p.add_argument("--md", type=Path, help="default docs/benchmarks.md")
    p.add_argument("--img-dir", type=Path, help="default docs/img")
    p.add_argument("--no-setup", action="store_true", help="do not run bench/setup.sh")
    p.add_argument("--no-profile", action="store_true", help="no py-spy on missed targets")
    return p.parse_args(argv)


@contextlib.contextmanager
def on_tmpfs() -> Iterator[Path]:
    """A scratch directory on /dev/shm; tempfile puts the labs' work directories there too."""
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    scratch = Path(tempfile.mkdtemp(prefix="ftpalg-bench-", dir=base))
    saved = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, cfg: dict[str, Any], scratch: Path) -> dict[str, Any]:
    wanted = [p for p in args.paths.split(",") if p]
    skip = set(args.skip.split(","))
    raw: dict[str, Any] = {
        "machine": machine.describe(),
        "config": cfg,
        "paths": [],
        "unavailable": {},
    }
    size = cfg["size_mib"] << 20
    t0 = time.monotonic()
    phases.log(f"writing the {cfg['size_mib']} MiB test file on tmpfs")
    digest = make_file(scratch, "big.bin", size)
    built: list[paths.BenchPath] = []
    try:
        for name in wanted:
            if why := paths.unavailable(name):
                raw["unavailable"][name] = why
                continue
            try:
                bp = paths.build(name, {"big.bin": scratch / "big.bin"})
            except Exception as exc:
                if name in ("direct", "kernel", "ftpalg"):
                    raise
                raw["unavailable"][name] = f"failed to start: {exc}"[:300]
                continue
            if bp.proxy_pid:
                bp.idle_children = len(procstat.descendants(bp.proxy_pid))
            built.append(bp)
            raw["paths"].append(name)
        phases.log(f"paths: {', '.join(raw['paths'])}; unavailable: {raw['unavailable']}")
        if "throughput" not in skip:
            phases.log("bulk throughput")
            raw["throughput"] = phases.throughput(
                built, "big.bin", size, digest, cfg["runs"], args.quick, scratch
            )
        if "sessions" not in skip:
            phases.log("session rate")
            raw["sessions"] = phases.session_rate(
                built, cfg["runs"], cfg["workers"], cfg["duration"]
            )
        if "latency" not in skip:
            phases.log("NOOP latency")
            raw["latency"] = phases.noop_latency(built, cfg["runs"], cfg["noops"])
        if "loaded_latency" not in skip:
            phases.log("NOOP latency under a download (ftpalg relay and kernel data plane)")
            raw["loaded_latency"] = loaded.measure(built, cfg["runs"], cfg["noops"], "big.bin")
        if "idle" not in skip:
            phases.log(f"{cfg['idle_sessions']} idle sessions through ftpalg")
            try:
                raw["concurrency"] = idle.concurrency(cfg["idle_sessions"])
            except Exception as exc:  # keep every other result; the report shows the failure
                raw["concurrency_error"] = f"{type(exc).__name__}: {exc}"[:2000]
                phases.log(f"  idle sessions failed: {raw['concurrency_error']}")
        summary = report.summarize(raw)
        alg = next((b for b in built if b.name == "ftpalg"), None)
        if alg and not args.no_profile and profile.available() is None:
            raw["profiles"] = profile_misses(summary, alg, cfg, scratch, args.results_dir)
    finally:
        for bp in built:
            with contextlib.suppress(Exception):
                bp.lab.close()
    raw["machine"]["load_after"] = machine.load_average()
    raw["seconds"] = time.monotonic() - t0
    return raw


def profile_misses(
    summary: dict[str, Any], alg: paths.BenchPath, cfg: dict[str, Any], scratch: Path, out_dir: Path
) -> dict[str, Any]:
    missed = {v["target"] for v in summary["verdict"] if v["pass"] is False}
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = {
        "throughput": (
            "CPU per GiB",
            "one EPSV download + upload",
            lambda: [
                phases.transfer(
                    alg,
                    "big.bin",
                    cfg["size_mib"] << 20,
                    "",
                    "epsv",
                    up,
                    False,
                    scratch,
                    90000 + up,
                )
                for up in (False, True)
            ],
        ),
        "sessions": (
            "session rate",
            f"{cfg['duration']:g} s of session load",
            lambda: phases.load(
                alg,
                "sessions",
                "--workers",
                str(cfg["workers"]),
                "--duration",
                str(cfg["duration"]),
            ),
        ),
        "latency": (
            "NOOP latency",
            "20000 NOOPs",
            lambda: phases.load(alg, "latency", "--count", "20000"),
        ),
    }
    if "throughput" in missed or "throughput vs C proxies" in missed:
        missed.add("CPU per GiB")
    profiles = {}
    assert alg.proxy_pid is not None
    for key, (target, what, fn) in work.items():
        if target not in missed:
            continue
        for native in (False, True):
            out = out_dir / f"pyspy-{key}{'-native' if native else ''}-{stamp}.txt"
            phases.log(f"profiling ftpalg under {what} (py-spy{' --native' if native else ''})")
            prof = profile.Profiler(alg.proxy_pid, out, native=native)
            try:
                fn()
            finally:
                prof.stop()
            if out.exists():
                profiles[key + (" (native)" if native else "")] = profile.top(out) | {
                    "what": what,
                    "file": str(out.relative_to(REPO) if out.is_relative_to(REPO) else out),
                }
    return profiles


def write(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    summary = report.summarize(raw)
    summary["profiles"] = raw.get("profiles", {})
    out = args.results_dir
    out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "bench"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{tag}-{stamp}.json").write_text(json.dumps(raw, indent=1) + "\n")
    default = out / "quick" if args.quick else None
    summary_path = args.summary or (
        default / "summary.json" if default else REPO / "bench/summary.json"
    )
    md_path = args.md or (default / "benchmarks.md" if default else REPO / "docs/benchmarks.md")
    img_dir = args.img_dir or (default / "img" if default else REPO / "docs/img")
    for path in (summary_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    images = charts.draw(summary, img_dir)
    rel = {k: _relative(v, md_path.parent) for k, v in images.items()}
    md_path.write_text(report.markdown(summary, rel))
    summary["outputs"] = {
        "json": str(out / f"{tag}-{stamp}.json"),
        "summary": str(summary_path),
        "markdown": str(md_path),
        "images": [str(v) for v in images.values()],
    }
    return summary


def _relative(path: Path, start: Path) -> str:
    import os.path

    return os.path.relpath(path, start)


def print_verdict(summary: dict[str, Any]) -> None:
    print("\nftpalg against the targets:")
    for v in summary["verdict"]:
        mark = "n/a " if v["pass"] is None else ("PASS" if v["pass"] else "MISS")
        print(f"  [{mark}] {v['target']:<24} goal {v['goal']:<34} measured {v['measured']}")
    for name, prof in summary.get("profiles", {}).items():
        print(f"\npy-spy, {name} ({prof['samples']} samples), top self time:")
        for fn, pct in prof["self"][:8]:
            print(f"  {pct:5.1f}%  {fn}")
    print(f"\nwritten: {', '.join(str(v) for k, v in summary['outputs'].items() if k != 'images')}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # SIGTERM: clean up the labs too
        previous = signal.signal(signal.SIGTERM, _on_sigterm(os.getpid()))
    try:
        return _main(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm(owner: int) -> Callable[[int, Any], None]:
    """SystemExit in this process; a forked child exits at once. pyroute2 forks children (to
    make sockets inside a namespace) and stops them with SIGTERM: one that raised would unwind
    through our `finally` blocks and tear the labs down under the parent's feet."""

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        sys.exit(128 + signum)

    return handler


def _main(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(QUICK if args.quick else FULL)
    for key in FULL:
        if (value := getattr(args, key)) is not None:
            cfg[key] = value
    if not args.no_setup:
        subprocess.run([str(REPO / "bench/setup.sh")], check=True)
    with on_tmpfs() as scratch:
        raw = run(args, cfg, scratch)
    summary = write(raw, args)
    print_verdict(summary)
    print(f"took {raw['seconds']:.0f} s", file=sys.stderr)
    return summary
