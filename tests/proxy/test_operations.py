"""Operations on loopback (reverse mode, no root): Prometheus metrics scraped during real
transfers, the xferlog, SIGHUP reloads and --check-config, all against a real ftpalg."""

from __future__ import annotations

import ftplib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.conftest import Alg, free_port, launch_alg, stop

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def events(alg: Alg, name: str) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in alg.log_text().splitlines() if x.startswith("{")]
    return [e for e in lines if e["event"] == name]


def login(alg: Alg) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(alg.host, alg.port, timeout=10)
    ftp.login("user", "secret")
    return ftp


def test_metrics_and_xferlog_count_a_real_session(
    ftp_server: int, ftp_root: Path, tmp_path: Path
) -> None:
    down, up = 300_001, 12_345
    (ftp_root / "src.bin").write_bytes(os.urandom(down))
    mport, xferlog = free_port("127.0.0.2"), tmp_path / "xfer.log"
    alg = launch_alg(
        tmp_path, ftp_server, "--metrics", f"127.0.0.2:{mport}", "--xferlog", str(xferlog)
    )
    url = f"http://127.0.0.2:{mport}/metrics"
    try:
        # launch_alg's port probe becomes a session or is abandoned before its upstream
        # connection; either way it is over within a second
        time.sleep(1.0)
        active = ("ftpalg_sessions_active", (("mode", "reverse"),))
        wait_for(lambda: scrape(url).get(active) == 0.0)
        before = scrape(url)
        assert value(before, "ftpalg_data_bytes_total", direction="to_client") == 0
        ftp = login(alg)
        during = scrape(url)
        assert value(during, "ftpalg_sessions_active", mode="reverse") == 1
        ftp.set_pasv(False)  # one active download: exactly one PORT rewrite
        sink = io.BytesIO()
        ftp.retrbinary("RETR src.bin", sink.write)
        assert len(sink.getvalue()) == down
        ftp.set_pasv(True)  # one passive upload: one 227 rewrite
        ftp.storbinary("STOR up load.bin", io.BytesIO(b"u" * up))
        for bad in ("PORT 10,0,0,1,18,67", "PORT 127,0,0,1,0,22", "PORT 1,2,3"):
            with pytest.raises(ftplib.error_perm):
                ftp.sendcmd(bad)
        ftp.quit()

        def finished() -> bool:
            after = scrape(url)
            return (
                value(after, "ftpalg_data_bytes_total", direction="to_server") == up
                and value(after, "ftpalg_sessions_active", mode="reverse") == 0
            )

        wait_for(finished)
        after = scrape(url)
        expected = {
            ("ftpalg_sessions_total", (("mode", "reverse"),)): 1,
            ("ftpalg_rewrites_total", (("kind", "PORT"),)): 1,
            ("ftpalg_rewrites_total", (("kind", "227"),)): 1,
            ("ftpalg_rewrites_total", (("kind", "EPRT"),)): 0,
            ("ftpalg_data_bytes_total", (("direction", "to_client"),)): down,
            ("ftpalg_data_bytes_total", (("direction", "to_server"),)): up,
            ("ftpalg_data_connections_total", (("mode", "active"),)): 1,
            ("ftpalg_data_connections_total", (("mode", "passive"),)): 1,
            ("ftpalg_data_connections_active", ()): 0,
            ("ftpalg_expectations_total", (("outcome", "used"),)): 2,
            ("ftpalg_expectations_pending", ()): 0,
            ("ftpalg_refusals_total", (("reason", "bounce"),)): 1,
            ("ftpalg_refusals_total", (("reason", "low_port"),)): 1,
            ("ftpalg_refusals_total", (("reason", "malformed"),)): 1,
            ("ftpalg_relay_errors_total", ()): 0,
            ("ftpalg_upstream_connect_seconds_count", ()): 1,
            ("ftpalg_seq_offset_bytes_count", ()): 2,
        }
        moved = {key: after.get(key, 0) - before.get(key, 0) for key in expected}
        assert moved == expected
    finally:
        stop(alg.proc)
    lines = [line.split() for line in xferlog.read_text().splitlines()]
    assert len(lines) == 2
    retr, stor = lines
    assert retr[5:] == [
        "1",
        "127.0.0.1",
        str(down),
        "src.bin",
        "b",
        "_",
        "o",
        "r",
        "user",
        "ftp",
        "0",
        "*",
        "c",
    ]
    assert stor[7:] == [str(up), "up_load.bin", "b", "_", "i", "r", "user", "ftp", "0", "*", "c"]
    done = events(alg, "data_finished")
    assert [(e["user"], e["command"], e["path"]) for e in done] == [
        ("user", "RETR", "src.bin"),
        ("user", "STOR", "up load.bin"),
    ]
    assert "secret" not in alg.log_text() and "secret" not in xferlog.read_text()


def test_metrics_endpoint_answers_only_get_metrics(ftp_server: int, tmp_path: Path) -> None:
    mport = free_port("127.0.0.2")
    alg = launch_alg(tmp_path, ftp_server, "--metrics", f"127.0.0.2:{mport}")
    try:
        for path, status in [("/nope", 404), ("/metrics", 200)]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.2:{mport}{path}", timeout=5) as r:
                    code = r.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            assert code == status
    finally:
        stop(alg.proc)


def test_sighup_reloads_policy_for_new_sessions_only(ftp_server: int, tmp_path: Path) -> None:
    conf = tmp_path / "ftpalg.toml"
    conf.write_text("loose = false\n")
    xferlog = tmp_path / "xfer.log"
    alg = launch_alg(tmp_path, ftp_server, "--config", str(conf), "--xferlog", str(xferlog))
    try:
        old = login(alg)
        conf.write_text("loose = true\ntproxy_mark = 7\nidle_timeout = 60\n")
        os.rename(xferlog, tmp_path / "xfer.log.1")  # log rotation: SIGHUP reopens the file
        alg.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: bool(events(alg, "reloaded")))
        (reloaded,) = events(alg, "reloaded")
        assert reloaded["changed"] == ["loose", "idle_timeout"]
        assert reloaded["needs_restart"] == ["tproxy_mark"]
        assert xferlog.exists()
        new = login(alg)
        third_party = "PORT 127,0,0,3,18,67"  # refuses at once: the dial ends quickly
        assert new.sendcmd(third_party).startswith("200")  # loose: trusted, rewritten
        with pytest.raises(ftplib.error_perm, match="is not your address"):
            old.sendcmd(third_party)  # the running session keeps its strict policy
        conf.write_text('loose = "yes"\n')
        alg.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: bool(events(alg, "reload_failed")))
        (failed,) = events(alg, "reload_failed")
        assert "loose: expected true or false, got str" in str(failed["error"])
        assert login(alg).sendcmd(third_party).startswith("200")  # the old config is kept
        assert alg.proc.poll() is None
    finally:
        stop(alg.proc)


def test_sighup_under_load_leaves_a_running_transfer_untouched(
    ftp_server: int, ftp_root: Path, tmp_path: Path
) -> None:
    data = os.urandom(8 << 20)
    (ftp_root / "big.bin").write_bytes(data)
    conf = tmp_path / "ftpalg.toml"
    conf.write_text("idle_timeout = 900\n")
    alg = launch_alg(tmp_path, ftp_server, "--config", str(conf))
    try:
        ftp = login(alg)
        got = bytearray()
        signalled = False

        def slow_sink(chunk: bytes) -> None:  # ~1 s for the file: the reload lands mid-way
            nonlocal signalled
            got.extend(chunk)
            if not signalled and len(got) > len(data) // 4:
                conf.write_text("idle_timeout = 30\nloose = true\n")
                alg.proc.send_signal(signal.SIGHUP)
                signalled = True
            time.sleep(0.001)

        ftp.retrbinary("RETR big.bin", slow_sink, blocksize=8192)
        assert signalled and bytes(got) == data  # byte-exact across the reload
        assert ftp.sendcmd("NOOP").startswith("200")  # the session itself carries on
        wait_for(lambda: bool(events(alg, "reloaded")))
        (reloaded,) = events(alg, "reloaded")
        assert reloaded["changed"] == ["loose", "idle_timeout"]
        ftp.quit()
    finally:
        stop(alg.proc)


def check(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftpalg", "--check-config", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_check_config(tmp_path: Path) -> None:
    good = check("--config", "conf/ftpalg.toml")
    assert good.returncode == 0 and good.stdout.count("\n") == 1, good
    assert good.stdout.startswith("ftpalg: config conf/ftpalg.toml: OK (transparent")
    bad = tmp_path / "bad.toml"
    bad.write_text("max_sessions = 0\n")
    run = check("--config", str(bad))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"ftpalg: config {bad}: max_sessions: 0 is out of range (1-1000000)\n"
    run = check("--user", "no-such-user-ftpalg")
    assert (run.returncode, run.stderr) == (2, "ftpalg: user: no such user 'no-such-user-ftpalg'\n")
    run = check("--xferlog", str(tmp_path / "missing" / "x.log"))
    assert run.returncode == 2 and "xferlog: no directory" in run.stderr


def test_check_config_names_overrides_and_what_starting_needs(tmp_path: Path) -> None:
    """The unit's ExecStart flags win over the file: --check-config says which keys; it
    also fails when the upstream name does not resolve, or `nft` is missing for the kernel
    set-up transparent mode makes."""
    conf = tmp_path / "ftpalg.toml"
    conf.write_text('loose = true\nidle_timeout = 60\nxferlog = "/tmp/x.log"\n')
    run = check("--config", str(conf), "--idle-timeout", "30", "--strict")
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip().endswith("; flags override the file's loose, idle_timeout"), run
    run = check("--upstream", "no-such-host.invalid")
    assert run.returncode == 2 and run.stderr.startswith(
        "ftpalg: upstream: cannot resolve 'no-such-host.invalid'"
    ), run.stderr
    no_nft = subprocess.run(
        [sys.executable, "-m", "ftpalg", "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=os.environ | {"PATH": str(Path(sys.executable).parent)},  # python, no nft
    )
    assert no_nft.returncode == 2, no_nft
    assert no_nft.stderr == "ftpalg: nft: not installed (the kernel set-up needs nftables' nft)\n"
    reverse = check("--upstream", "127.0.0.1")  # reverse mode with auto: no nft needed
    assert reverse.returncode == 0, reverse.stderr
