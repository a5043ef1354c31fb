"""ftpalg's kernel state comes back when something removes it (issue 16, item 3b):
`nft flush ruleset` — what a reload of nftables.service does — and a deleted policy-routing
rule are noticed from netlink notifications and re-installed; an expectation announced
before the flush keeps its pinhole (put back after the re-install) and its transfer arrives.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import make_file, start_server
from tests.lab.conftest import start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

EPSV_THEN_WAIT = """
import ftplib, hashlib, sys
ftp = ftplib.FTP(sys.argv[1], timeout=20)
ftp.login(sys.argv[2], sys.argv[3])
ftp.voidcmd("TYPE I")
host, port = ftp.makepasv()   # the pinhole is open from here on
print("ANNOUNCED", flush=True)
sys.stdin.readline()          # the test flushes the ruleset meanwhile
conn = ftp.transfercmd("RETR f.bin")
data = b""
while chunk := conn.recv(65536):
    data += chunk
conn.close()
ftp.voidresp()
print("DIGEST", hashlib.sha256(data).hexdigest(), flush=True)
"""


def restored(alg: AlgProcess, mark: int) -> bool:
    return bool(alg.named("kernel_state_restored", since=mark))


def test_flush_ruleset_and_a_deleted_rule_are_repaired(tmp_path: Path) -> None:
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=True)
        server = start_server(lab, "vsftpd", lab.addresses.servers_v4[1])
        digest = make_file(server.root, "f.bin", 1 << 20, seed=3)
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "kernel"])
        target = server.target
        argv = [sys.executable, "-c", EPSV_THEN_WAIT, str(target.address)]
        argv += [target.user or "anonymous", target.password or "x"]
        client = lab.popen("cli", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "ANNOUNCED"
        mark = alg.mark()
        lab.run("gw", ["nft", "flush", "ruleset"], check=True)
        assert wait_until(lambda: restored(alg, mark), 10), alg.tail()
        assert len(alg.named("kernel_state_missing", since=mark)) == 1
        (back,) = alg.named("kernel_state_restored", since=mark)
        assert back["pinholes"] == 1, back  # the open expectation's pinhole is back
        apply_closed_gateway(lab, pinholes=True)  # the operator's rules come back too
        out, _ = client.communicate("\n", timeout=30)
        assert f"DIGEST {digest}" in out, out
        # the routing rule deleted by hand: noticed, put back, transparent FTP works again
        mark = alg.mark()
        lab.run("gw", ["ip", "rule", "del", "fwmark", "0x1/0x1", "lookup", "100"], check=True)
        assert wait_until(lambda: restored(alg, mark), 10), alg.tail()
        assert "fwmark 0x1/0x1 lookup 100" in lab.run("gw", ["ip", "rule"]).stdout
        result = run_transfer(lab, "curl-epsv", target, "f.bin", tmp_path / "f.bin")
        assert result.ok and result.sha256 == digest, result.detail
        assert alg.stop() == 0
        assert lab.run("gw", ["nft", "list", "table", "inet", "ftpalg"]).returncode != 0
    finally:
        lab.close()


def test_a_quiet_gateway_sees_no_repairs(lab: Lab, tmp_path: Path) -> None:
    """Pinholes and transfers are ftpalg's own churn: no `kernel_state_missing` from them."""
    apply_closed_gateway(lab, pinholes=True)
    server = start_server(lab, "vsftpd", lab.addresses.servers_v4[1])
    digest = make_file(server.root, "f.bin", 1 << 16, seed=4)
    alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "kernel"])
    for n, mode in enumerate(["curl-epsv", "curl-port", "curl-pasv"]):
        result = run_transfer(lab, mode, server.target, "f.bin", tmp_path / f"{n}.bin")
        assert result.ok and result.sha256 == digest, result.detail
    assert wait_until(lambda: len(alg.named("data_finished")) >= 3, 10)
    assert not alg.named("kernel_state_missing"), alg.tail()
