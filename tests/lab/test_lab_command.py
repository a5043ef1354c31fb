"""`ftpalg lab` end to end, as the operator runs it: a subprocess building its own lab."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftpalg.lab.netns import lab_unavailable_reason
from tests.lab.test_lab_report import parse_table as table
from tests.requirements import need_tools, unavailable

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]


def _need_lab() -> None:
    reason = lab_unavailable_reason()
    if reason:
        unavailable(reason)
    need_tools("curl", "lftp", "tcpdump")


def ftpalg_lab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "ftpalg", "lab", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=220, cwd=REPO, env=os.environ | (env or {})
    )


def lab_id(stderr: str) -> str:
    m = re.search(r"building namespaces (lab[0-9a-f]{6})-cli", stderr)
    assert m, stderr
    return m.group(1)


def namespaces_of(lab: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(lab)]


def test_lab_runs_the_whole_matrix_through_ftpalg() -> None:
    _need_lab()
    run = ftpalg_lab("--size", "1048576")
    assert run.returncode == 0, run.stdout + run.stderr
    header, rows = table(run.stdout)
    assert header[-2:] == ["ftpalg", "MB/s"] and "kernel" not in header
    assert len(rows) == 24
    assert all(row[5] == "ok" and float(row[6]) > 0 for row in rows), run.stdout
    kinds = {row[4].split()[0] for row in rows}
    assert kinds == {"PORT", "EPRT", "227", "229"}
    for _mode, ip, _dir, client, server, *_ in rows:
        if client.startswith("PORT"):  # the client's own address became the gateway's
            assert re.match(r"PORT 10,\d+,1,2,", client) and server.startswith("PORT 203,0,113,1,")
        if client.startswith("EPRT") and ip == "v6":
            assert "|2|2001:db8:1::2|" in client
            assert "|2|2001:0db8:0002:0000:0000:0000:0000:0001|" in server
        if client.startswith("227"):  # transparent: passive stays on the server's address
            assert client == server and client.startswith("227 (203,0,113,10,")
    assert "ftpalg: 24/24 ok" in run.stdout
    assert "[ 24/24] ftpalg lftp-active v6 put" in run.stderr
    assert namespaces_of(lab_id(run.stderr)) == []


def test_lab_kernel_shows_both_paths_side_by_side() -> None:
    _need_lab()
    run = ftpalg_lab("--kernel", "--quick", "--size", "1048576")
    assert run.returncode == 0, run.stdout + run.stderr
    header, rows = table(run.stdout)
    assert header[-4:] == ["ftpalg", "MB/s", "kernel", "MB/s"]
    assert len(rows) == 12
    assert all(row[5] == "ok" and row[7] == "ok" for row in rows), run.stdout
    assert "ftpalg: 12/12 ok; kernel: 12/12 ok" in run.stdout
    kernel = run.stdout.split("Commands on the kernel path", 1)[1]
    _, krows = table(kernel)
    assert len(krows) == 12
    port = [r for r in krows if r[3].startswith("PORT")]
    assert port and all(r[4].startswith("PORT 203,0,113,1,") for r in port)  # nf_nat_ftp's work
    assert namespaces_of(lab_id(run.stderr)) == []


def test_lab_shows_conversions_under_a_data_policy() -> None:
    """`ftpalg lab --data-policy passive`: every transfer arrives; the active-mode clients'
    rows show ftpalg answering their PORT/EPRT and sending its own EPSV upstream."""
    _need_lab()
    run = ftpalg_lab("--quick", "--data-policy", "passive", "--size", "1048576")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ftpalg: 12/12 ok" in run.stdout
    lines = [line for line in run.stdout.splitlines() if line.startswith("curl-")]
    assert len(lines) == 12, run.stdout
    active = [line for line in lines if line.startswith(("curl-port", "curl-eprt"))]
    assert len(active) == 6 and all("(answered by ftpalg)" in line for line in active), active
    assert all("EPSV (ftpalg's own)" in line for line in active), active
    passive = [line for line in lines if line not in active]
    assert not any("ftpalg's own" in line for line in passive), passive
    assert "data_policy passive" in run.stderr
    assert namespaces_of(lab_id(run.stderr)) == []


def test_lab_ftps_rows_with_the_kernel_side_by_side() -> None:
    """`ftpalg lab --ftps --kernel`: explicit FTPS passthrough (curl --ssl-reqd, lftp
    ssl-force; vsftpd requiring TLS) through ftpalg and through the kernel helper, terminate
    in reverse mode (curl --ssl-reqd, PROT P) in front of the plain server and, with
    tls_upstream, in front of the vsftpd requiring TLS; every transfer
    sha256-checked by the lab; each row names its tls policy and what ftpalg saw."""
    _need_lab()
    need_tools("openssl")
    run = ftpalg_lab("--ftps", "--kernel", "--size", "1048576")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ftpalg: 24/24 ok; kernel: 24/24 ok" in run.stdout
    header, rows = table(run.stdout.split("\nFTPS:\n", 1)[1])
    assert header == [
        "tls",
        "mode",
        "ip",
        "dir",
        "ftpalg",
        "saw",
        "ftpalg",
        "MB/s",
        "kernel",
        "MB/s",
    ]
    assert len(rows) == 12, rows
    passthrough = [r for r in rows if r[0] == "passthrough"]
    terminate = [r for r in rows if r[0] == "terminate"]
    upstream = [r for r in rows if r[0] == "terminate+upstream"]
    assert {(r[1], r[2]) for r in passthrough} == {
        ("curl-ftps", "v4"),
        ("lftp-ftps", "v4"),
        ("curl-ftps", "v6"),
    }
    assert {r[3] for r in passthrough} == {"get", "put"} and len(terminate) == 4
    for row in passthrough:
        assert re.fullmatch(r"AUTH (TLS|SSL) passed through, data window opened", row[4]), row
        assert row[5] == "ok" and row[7] == "ok", row
    for row in terminate:
        assert re.fullmatch(r"AUTH (TLS|SSL) answered by ftpalg, plain upstream", row[4]), row
        assert row[5] == "ok" and row[7:] == ["-", "-"], row
    assert [(r[2], r[3]) for r in upstream] == [("v4", "get"), ("v4", "put")]
    for row in upstream:  # tls_upstream: FTPS to the vsftpd requiring TLS too
        assert re.fullmatch(r"AUTH (TLS|SSL) answered by ftpalg, TLS upstream \(PROT P\)", row[4])
        assert row[5] == "ok" and row[7:] == ["-", "-"], row
    assert "FTPS ftpalg: 12/12 ok; kernel: 6/6 ok" in run.stdout
    assert "ftpalg --tls terminate (reverse mode" in run.stderr
    assert namespaces_of(lab_id(run.stderr)) == []


def test_lab_keep_waits_for_ctrl_c_then_tears_down() -> None:
    _need_lab()
    argv = [sys.executable, "-m", "ftpalg", "lab", "--keep", "--quick", "--size", "64k"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        assert "Press Ctrl-C" in seen[-1], "".join(seen)
        for _ in range(3):  # the namespace lines follow
            seen.append(proc.stdout.readline())
        names = re.findall(r"ip netns exec (lab[0-9a-f]{6}-\w+) bash", "".join(seen))
        assert len(names) == 3 and set(namespaces_of(names[0][:9])) == set(names)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "tearing down" in err and namespaces_of(names[0][:9]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_failing_step_is_named_and_the_lab_is_gone() -> None:
    _need_lab()
    run = ftpalg_lab("--quick", "--server", "vsftpd", env={"FTPALG_VSFTPD": "/bin/false"})
    assert run.returncode == 1
    assert "starting vsftpd on 203.0.113.10 port 21: failed: vsftpd" in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert namespaces_of(lab_id(run.stderr)) == []
