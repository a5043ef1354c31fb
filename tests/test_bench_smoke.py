"""The benchmark command still works: `python -m bench --quick` end to end, no timing asserted.

Runs the tiny version (16 MiB transfers checked by sha256, one short round of session rate,
NOOP latency idle and under a download on both ftpalg data planes, 200 idle sessions through
ftpalg) with every output redirected to a temporary directory, then checks the structure of
what it wrote. Paths whose C peer is not installed
are reported as unavailable by the bench; the three that need only the lab must be there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab.conftest import start_lab
from tests.requirements import unavailable

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]


def test_quick_bench_writes_results(tmp_path: Path) -> None:
    start_lab().close()  # skips, or fails with FTPALG_LAB_REQUIRED=1, when no lab can be built
    try:
        from bench.run import main
    except ImportError as exc:  # the bench lives next to the package, not inside it
        unavailable(f"bench package not importable: {exc}")
    md, summary_path, img = tmp_path / "bench.md", tmp_path / "summary.json", tmp_path / "img"
    outputs = ["--results-dir", str(tmp_path), "--md", str(md), "--summary", str(summary_path)]
    summary = main(["--quick", "--no-setup", "--no-profile", *outputs, "--img-dir", str(img)])

    assert {"direct", "kernel", "ftpalg"} <= set(summary["paths"])
    for name in ("suse", "proftpd"):
        assert name in summary["paths"] or name in summary["unavailable"]

    raw_files = list(tmp_path.glob("quick-*.json"))
    assert len(raw_files) == 1
    raw = json.loads(raw_files[0].read_text())
    assert {"machine", "config", "paths", "throughput", "sessions", "latency"} <= raw.keys()
    assert {"date", "cpu", "nproc", "memory_gib", "kernel"} <= raw["machine"].keys()

    # every transfer moved the whole file and was checked by sha256, both directions
    combos = {(r["path"], r["mode"], r["direction"]) for r in raw["throughput"]}
    modes = [(m, d) for m in ("epsv", "port") for d in ("download", "upload")]
    assert combos == {(p, m, d) for p in summary["paths"] for m, d in modes}
    for r in raw["throughput"]:
        assert r["checked"] == "sha256" and r["bytes"] == 16 << 20
        kernel_only = r["path"] in ("direct", "kernel")
        assert r["mbps"] > 0 and (r["proxy_cpu_s_per_gib"] is None) == kernel_only

    for r in raw["sessions"]:
        assert r["sessions"] > 0 and r["errors"] == 0, r
    assert {r["path"] for r in raw["latency"]} == set(summary["paths"])
    assert all(r["p50_us"] > 0 and r["n"] == 200 for r in raw["latency"])

    # NOOPs under a download, idle and loaded, on both ftpalg data planes
    planes = [p for p in ("ftpalg", "ftpalg-kernel") if p in summary["paths"]]
    loads = {(r["path"], r["load"]) for r in raw["loaded_latency"]}
    assert loads == {(p, load) for p in planes for load in ("idle", "download")}
    for r in raw["loaded_latency"]:
        assert r["n"] == 200 and 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"], r
        if r["load"] == "download":
            assert r["transfers"] >= 1 and r["download_bytes"] == r["transfers"] << 24, r

    idle = raw["concurrency"]
    assert idle["banners_ok"] == idle["sessions"] == idle["noop_ok"] == 200
    assert idle["ftpalg_survived"] and idle["rss_per_session_kib"] is not None

    saved = json.loads(summary_path.read_text())
    assert {"throughput", "sessions", "latency", "concurrency", "verdict"} <= saved.keys()
    if len(planes) == 2:
        assert saved["loaded_latency"]["added_p99_us"] is not None
        assert "NOOP p99 under load" in {v["target"] for v in saved["verdict"]}
    targets = {v["target"] for v in saved["verdict"]}
    assert {"throughput", "CPU per GiB", "session rate", "NOOP latency", "idle sessions"} <= targets
    assert all(v["pass"] in (True, False, None) for v in saved["verdict"])

    text = md.read_text()
    for heading in (
        "# Benchmarks",
        "## Verdict",
        "## Bulk throughput",
        "## Session rate",
        "## Control latency under a data transfer",
        "## Idle sessions",
    ):
        assert heading in text
    assert "ftpalg (TPROXY)" in text
    for image in summary["outputs"]["images"]:
        assert Path(image).parent == img and Path(image).stat().st_size > 0
        assert f"img/{Path(image).name}" in text


def test_tls_bench_runs_all_three_modes() -> None:
    """bench/tls_bench.py (docs/ftps.md "What it costs"), tiny: the relay, the relay with
    tls_upstream (TLS on both legs) and the direct TLS server each move every byte (the
    bench asserts the count) and report MB/s and CPU s/GiB."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "bench.tls_bench", "--size-mib", "4", "--repeat", "1"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=root)
    assert run.returncode == 0, run.stderr
    rows = re.findall(r"^(\w+) +(\d+) MB/s +([\d.]+) CPU s/GiB +\(4 MiB\)$", run.stdout, re.M)
    assert [r[0] for r in rows] == ["relay", "upstream", "direct"], run.stdout
    assert all(int(mbs) > 0 and float(cpu) > 0 for _, mbs, cpu in rows), run.stdout
