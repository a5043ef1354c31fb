"""Operations in transparent mode (issue 8): ftpalg drops root to `nobody` keeping only
CAP_NET_ADMIN + CAP_NET_BIND_SERVICE, still relays real transfers, counts them in its
Prometheus metrics and xferlog, and removes its kernel state at exit as that user."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ftpalg.lab.alg import start_ftpalg
from ftpalg.lab.clients import run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import make_file, sha256_file
from ftpalg.ops.privileges import KEEP_MASK, proc_status
from tests.lab.conftest import ServerPool, start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

SCRAPE = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read().decode())"
NOBODY = "65534"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(lab: Lab) -> Samples:
    run = lab.run("gw", [sys.executable, "-c", SCRAPE, "http://127.0.0.1:9121/metrics"])
    assert run.returncode == 0, run.stderr
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(run.stdout)
        for s in family.samples
    }


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_unprivileged_gateway_counts_transfers_and_cleans_up(tmp_path: Path) -> None:
    lab = start_lab()
    try:
        apply_closed_gateway(lab)
        base = Path(tempfile.mkdtemp(prefix=f"{lab.id}-ops-"))  # nobody may traverse it
        lab.on_close(lambda: shutil.rmtree(base, ignore_errors=True))
        base.chmod(0o755)
        logdir = base / "log"
        logdir.mkdir()
        logdir.chmod(0o777)  # like systemd's LogsDirectory=: the user may create files
        xferlog = logdir / "xferlog"
        ops = ["--user", "nobody", "--metrics", "127.0.0.1:9121", "--xferlog", str(xferlog)]
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", *ops])
        assert alg.named("privileges_dropped")
        tasks = list(Path(f"/proc/{alg.proc.pid}/task").iterdir())
        for task in tasks:  # every thread, not only the main one
            status = proc_status(f"{alg.proc.pid}/task/{task.name}")
            assert status["Uid"].split() == [NOBODY] * 4, status["Uid"]
            caps = {k: int(status[k], 16) for k in ("CapEff", "CapPrm", "CapAmb", "CapBnd")}
            assert caps == dict.fromkeys(caps, KEEP_MASK)  # 0x1400: NET_ADMIN, NET_BIND_SERVICE
        srv = ServerPool(lab).get("pyftpdlib")
        down, up = 1_000_003, 77_777
        digest = make_file(srv.root, "ops.bin", down)
        before = scrape(lab)
        result = run_transfer(lab, "curl-port", srv.target, "ops.bin", tmp_path / "down.bin")
        assert result.ok and result.sha256 == digest, result.detail
        make_file(tmp_path, "up.bin", up)
        result = run_transfer(
            lab,
            "curl-pasv",
            srv.target,
            srv.upload_path("up.bin"),
            tmp_path / "up.bin",
            upload=True,
        )
        assert result.ok, result.detail
        assert sha256_file(srv.uploaded("up.bin")) == sha256_file(tmp_path / "up.bin")
        deadline = time.monotonic() + 10
        while True:
            after = scrape(lab)
            if moved(before, after, "ftpalg_data_bytes_total", direction="to_server") == up:
                break
            assert time.monotonic() < deadline, "upload never counted"
            time.sleep(0.1)
        assert moved(before, after, "ftpalg_rewrites_total", kind="PORT") == 1
        # the 227 names the server's own address and port in transparent mode: announced
        # (an expectation, used once), not rewritten
        assert moved(before, after, "ftpalg_rewrites_total", kind="227") == 0
        assert moved(before, after, "ftpalg_expectations_total", outcome="used") == 2
        assert moved(before, after, "ftpalg_data_bytes_total", direction="to_client") == down
        assert moved(before, after, "ftpalg_data_connections_total", mode="active") == 1
        assert moved(before, after, "ftpalg_sessions_total", mode="transparent") == 2
        assert moved(before, after, "ftpalg_relay_errors_total") == 0
        # SIGHUP as nobody: the xferlog (opened as root) is reopened, then rotated
        for rotate in (False, True):
            if rotate:
                xferlog.rename(logdir / "xferlog.1")
            mark = alg.mark()
            alg.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda m=mark: bool(alg.named("reloaded", since=m)), 10)
            assert not alg.named("xferlog_open_failed", since=mark), alg.tail()
        result = run_transfer(lab, "curl-pasv", srv.target, "ops.bin", tmp_path / "again.bin")
        assert result.ok and result.sha256 == digest, result.detail
        assert wait_until(lambda: xferlog.exists() and "ops.bin" in xferlog.read_text(), 10)
        xferlog.rename(logdir / "xferlog.2")  # the checks below read the first file
        (logdir / "xferlog.1").rename(xferlog)
        assert alg.stop() == 0  # teardown runs as nobody with CAP_NET_ADMIN
        assert not alg.named("kernel_teardown_failed"), alg.tail()
        assert lab.run("gw", ["nft", "list", "table", "inet", "ftpalg"]).returncode != 0
        assert "fwmark" not in lab.run("gw", ["ip", "rule"]).stdout
        assert lab.run("gw", ["ip", "route", "show", "table", "100"]).stdout.strip() == ""
        lines = [line.split() for line in xferlog.read_text().splitlines()]
        assert [(x[7], x[8], x[11], x[13], x[17]) for x in lines] == [
            (str(down), "ops.bin", "o", "lab", "c"),
            (str(up), "up.bin", "i", "lab", "c"),
        ]
    finally:
        lab.close()


def test_started_unprivileged_with_ambient_capabilities_like_the_systemd_unit(
    tmp_path: Path,
) -> None:
    """conf/ftpalg.service starts ftpalg as a user with ambient CAP_NET_ADMIN and
    CAP_NET_BIND_SERVICE under no_new_privs, never as root: set-up, relay and teardown must
    work so. (CAP_DAC_READ_SEARCH only lets `nobody` read a virtualenv under /root.)"""
    lab = start_lab()
    try:
        apply_closed_gateway(lab)
        caps = "+net_admin,+net_bind_service,+dac_read_search"
        argv = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            f"--inh-caps=-all,{caps}",
            f"--ambient-caps={caps}",
            f"--bounding-set=-all,{caps}",
            "--no-new-privs",
            sys.executable,
            "-m",
            "ftpalg",
            "--listen",
            "0.0.0.0:21",
        ]
        proc = lab.popen("gw", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 15
            while lab.run("gw", ["nft", "list", "table", "inet", "ftpalg"]).returncode != 0:
                assert proc.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.1)
            assert proc_status(proc.pid)["Uid"].split() == [NOBODY] * 4
            srv = ServerPool(lab).get("pyftpdlib")
            digest = make_file(srv.root, "amb.bin", 123_457)
            for mode in ("curl-port", "curl-epsv"):
                result = run_transfer(lab, mode, srv.target, "amb.bin", tmp_path / f"{mode}.bin")
                assert result.ok and result.sha256 == digest, result.detail
        finally:
            proc.terminate()
            assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
        assert lab.run("gw", ["nft", "list", "table", "inet", "ftpalg"]).returncode != 0
        assert "fwmark" not in lab.run("gw", ["ip", "rule"]).stdout
    finally:
        lab.close()
