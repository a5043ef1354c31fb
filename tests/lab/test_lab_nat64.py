"""`ftpalg lab --nat64` end to end (a subprocess building its own lab), and its table."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from ftpalg.lab.nat64_matrix import SERVER_KINDS, NatCase, NatOutcome, cases, render
from ftpalg.lab.netns import lab_unavailable_reason
from tests.lab.test_lab_command import REPO, ftpalg_lab, lab_id, namespaces_of
from tests.lab.test_lab_report import parse_table
from tests.requirements import need_tools, unavailable

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]


def test_lab_nat64_runs_every_client_against_every_ipv4_server() -> None:
    reason = lab_unavailable_reason()
    if reason:
        unavailable(reason)
    need_tools("curl", "lftp", "wget")
    run = ftpalg_lab("--nat64", "--size", "1M")
    assert run.returncode == 0, run.stdout + run.stderr
    header, rows = parse_table(run.stdout)
    assert header == [
        "client",
        "server",
        "dir",
        "client",
        "side",
        "server",
        "side",
        "ftpalg",
        "MB/s",
    ]
    assert len(rows) == len(cases()) == 80
    assert {row[1] for row in rows} == set(SERVER_KINDS)
    for client, server, _dir, client_side, server_side, result, mbps in rows:
        assert result == "ok" and float(mbps) > 0, rows
        active = client_side.startswith("EPRT")
        if active:  # the IPv6 client's own address, the gateway's IPv4 address upstream
            assert client_side.startswith("EPRT |2|2001:db8:1::2|"), client_side
            assert server_side.startswith("EPRT |1|203.0.113.1|"), server_side
        else:
            assert client_side.startswith("229 (|||"), client_side
        if server == "no-epsv":  # refused: ftpalg sent PASV / PORT instead
            assert (
                server_side.endswith("refused; PORT")
                if active
                else (server_side.startswith("EPSV refused; PASV: 227 (203,0,113,13,"))
            ), server_side
        else:
            assert "refused" not in server_side, (client, server, server_side)
    assert "ftpalg (NAT64 64:ff9b::/96): 80/80 ok" in run.stdout
    assert namespaces_of(lab_id(run.stderr)) == []


def test_lab_nat64_runs_ftpalg_only() -> None:
    run = ftpalg_lab("--nat64", "--kernel")
    assert run.returncode == 2
    assert run.stderr == "ftpalg lab: --nat64 runs ftpalg only: no --kernel, no --data-policy\n"


def test_nat64_table_notes_failures() -> None:
    rows = [NatCase("curl-epsv", "vsftpd", False), NatCase("wget-active", "no-epsv", False)]
    outcomes = [
        NatOutcome(True, 1 << 20, 0.5, "", "229 (|||40001|)", "229 (|||40001|)"),
        NatOutcome(False, 0, 3.0, "wget active exit 8: 500 ...", "-", "-"),
    ]
    text = render(rows, outcomes)
    _, table = parse_table(text)
    assert table[0][-2:] == ["ok", "2.1"] and table[1][-2:] == ["FAIL [1]", "-"]
    assert "[1] wget-active no-epsv get: wget active exit 8: 500 ..." in text
    assert text.rstrip().endswith("ftpalg (NAT64 64:ff9b::/96): 1/2 ok")
    assert [c.label for c in cases(quick=True)][:2] == [
        "curl-epsv pyftpdlib get",
        "curl-epsv pyftpdlib put",
    ]


def test_lab_nat64_keep_leaves_it_usable_until_ctrl_c() -> None:
    """--keep: the printed `try:` command works in the kept lab; Ctrl-C tears it down."""
    reason = lab_unavailable_reason()
    if reason:
        unavailable(reason)
    need_tools("curl")
    argv = [sys.executable, "-m", "ftpalg", "lab", "--nat64", "--keep", "--quick"]
    proc = subprocess.Popen(
        [*argv, "--size", "64k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("  try:" in x for x in seen):
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
        text = "".join(seen)
        assert "Press Ctrl-C" in text and "30/30 ok" in text, text
        names = re.findall(r"ip netns exec (lab[0-9a-f]{6}-\w+) bash", text)
        assert len(names) == 3 and set(namespaces_of(names[0][:9])) == set(names)
        try_line = next(x for x in seen if "  try:" in x).split("try:", 1)[1].split()
        assert "ftp://[64:ff9b::cb00:710a]/lab.bin" in try_line
        done = subprocess.run(try_line, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "tearing down" in err and namespaces_of(names[0][:9]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
