"""The kernel data plane in the lab (docs/data-plane.md): what only it must prove, beyond the
transfer matrix that test_transparent.py runs on both planes.

- byte counts in `data_finished` and the xferlog equal the file sizes (the kernel carried the
  bytes; ftpalg counted them from the SYN and FIN sequence numbers);
- a thief on the client's network gets nothing from a passive pinhole, the client does;
- a closed session leaves no pinhole behind;
- a foreign forward chain with policy drop and without the documented rule: `auto` falls back
  to the relay with a warning naming the rule, `kernel` refuses to start (one line).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import run_transfer
from ftpalg.lab.gateway import PINHOLE_RULE, apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import FtpServer, make_file, sha256_file, start_server
from tests.lab.conftest import Baseline, baseline, start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

SIZE = 3 << 20


@dataclass
class Env:
    lab: Lab
    alg: AlgProcess
    server: FtpServer
    digest: str
    xferlog: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=True)
        server = start_server(lab, "vsftpd", lab.addresses.servers_v4[1])
        digest = make_file(server.root, "f.bin", SIZE, seed=7)
        xferlog = tmp_path_factory.mktemp("xfer") / "xferlog"
        args = ["--listen", "0.0.0.0:21", "--data-plane", "kernel", "--xferlog", str(xferlog)]
        alg = start_ftpalg(lab, args)
        yield Env(lab, alg, server, digest, xferlog)
    finally:
        lab.close()


@pytest.fixture
def since(env: Env) -> Baseline:
    return baseline(env.alg)


def finished(env: Env, since: Baseline) -> list[dict[str, object]]:
    return [e for e in env.alg.events(since.log) if e["event"] == "data_finished"]


@pytest.mark.parametrize("mode", ["curl-epsv", "curl-port"])
def test_byte_counts_equal_the_file_sizes(
    env: Env, since: Baseline, mode: str, tmp_path: Path
) -> None:
    down = run_transfer(env.lab, mode, env.server.target, "f.bin", tmp_path / "down.bin")
    assert down.ok and down.sha256 == env.digest, down.detail
    up_name = f"up-{mode}.bin"
    up_digest = make_file(tmp_path, up_name, SIZE + 1, seed=8)
    up = run_transfer(
        env.lab,
        mode,
        env.server.target,
        env.server.upload_path(up_name),
        tmp_path / up_name,
        upload=True,
    )
    assert up.ok, up.detail
    assert sha256_file(env.server.uploaded(up_name)) == up_digest
    assert wait_until(lambda: len(finished(env, since)) >= 2, 10), env.alg.tail()
    ends = finished(env, since)
    listings = [e for e in ends if e["bytes_to_client"] == e["bytes_to_server"] == 0]
    transfers = [e for e in ends if e not in listings]
    assert all(e["data_plane"] == "kernel" and e["result"] == "ok" for e in ends), ends
    assert [(e["bytes_to_client"], e["bytes_to_server"]) for e in transfers] == [
        (SIZE, 0),
        (0, SIZE + 1),
    ]
    lines = env.xferlog.read_text().splitlines()
    sizes = [int(line.split()[7]) for line in lines[-2:]]
    assert sizes == [SIZE, SIZE + 1], lines[-2:]


def test_a_thief_gets_nothing_from_a_passive_pinhole(env: Env, since: Baseline) -> None:
    code = """
import ftplib, hashlib, socket, sys
ftp = ftplib.FTP(sys.argv[1], timeout=10)
ftp.login()  # vsftpd in the lab: anonymous
ftp.voidcmd("TYPE I")
host, port = ftplib.parse227(ftp.sendcmd("PASV"))
try:
    socket.create_connection((host, port), timeout=2, source_address=(sys.argv[2], 0))
    print("THIEF connected")
except OSError as exc:
    print("THIEF", type(exc).__name__)
data = socket.create_connection((host, port), timeout=10)
ftp.putcmd("RETR f.bin")
ftp.getresp()
body = b""
while chunk := data.recv(65536):
    body += chunk
print("SHA", hashlib.sha256(body).hexdigest(), ftp.voidresp().split()[0])
"""
    third = f"10.{env.lab.addresses.subnet}.1.3"
    env.lab.run("cli", ["ip", "addr", "replace", f"{third}/24", "dev", env.lab.ifnames.client])
    out = env.lab.run("cli", ["python3", "-c", code, str(env.server.address), third], timeout=40)
    assert out.returncode == 0, out.stderr
    assert "THIEF TimeoutError" in out.stdout  # the kernel dropped its SYN: no pinhole for it
    assert f"SHA {env.digest} 226" in out.stdout
    (accepted,) = [e for e in env.alg.events(since.log) if e["event"] == "data_accepted"]
    assert str(accepted["peer"]).startswith(f"{env.lab.addresses.client_v4}:")


def pinhole_elements(env: Env) -> list[object]:
    out = env.lab.run("gw", ["nft", "-j", "list", "set", "inet", "ftpalg", "gate4"])
    assert out.returncode == 0, out.stderr
    sets = [x["set"] for x in json.loads(out.stdout)["nftables"] if "set" in x]
    return list(sets[0].get("elem", []))


def test_a_closed_session_leaves_no_pinhole(env: Env, since: Baseline) -> None:
    code = """
import ftplib, sys
ftp = ftplib.FTP(sys.argv[1], timeout=10)
ftp.login()
print(ftp.sendcmd("EPSV"), flush=True)
sys.stdin.readline()  # hold the session until the test has looked
ftp.quit()
"""
    argv = ["python3", "-c", code, str(env.server.address)]
    client = env.lab.popen("cli", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdout.readline().startswith("229 ")
    assert len(pinhole_elements(env)) == 1  # the EPSV's expectation is a pinhole
    client.communicate("\n", timeout=20)
    baseline(env.alg)  # the session ended
    assert pinhole_elements(env) == []


@pytest.mark.parametrize("plane", ["auto", "kernel"])
def test_a_foreign_drop_chain_without_the_rule(plane: str) -> None:
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=False)  # policy drop, no rule for ftpalg's tag
        args = ["--listen", "0.0.0.0:21", "--data-plane", plane]
        if plane == "auto":
            alg = start_ftpalg(lab, args)
            assert alg.named("started")[0]["data_plane"] == "relay"
            (warning,) = alg.named("data_plane_relay")
            assert PINHOLE_RULE in str(warning["reason"]), warning
            return
        argv = [sys.executable, "-m", "ftpalg", *args]
        run = lab.run("gw", argv, timeout=30)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and len(lines) == 1, run.stderr
        assert lines[0].startswith("ftpalg: data_plane kernel: forward chain"), lines
        assert PINHOLE_RULE in lines[0]
    finally:
        lab.close()


def test_sighup_rechecks_the_forward_chains(tmp_path: Path) -> None:
    """`auto` on a gateway whose firewall has the rule: the kernel plane. The rule goes away
    and SIGHUP: new sessions use the relay, with a warning naming the rule; it comes back and
    SIGHUP: the kernel plane again. Every transfer arrives intact."""
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=True)
        server = start_server(lab, "vsftpd", lab.addresses.servers_v4[1])
        digest = make_file(server.root, "f.bin", 1 << 20, seed=9)
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "auto"])
        assert alg.named("started")[0]["data_plane"] == "kernel"
        for rule, plane in ((False, "relay"), (True, "kernel")):
            apply_closed_gateway(lab, pinholes=rule)
            mark = alg.mark()
            alg.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda m=mark: bool(alg.named("reloaded", since=m)), 10)
            if plane == "relay":
                (warning,) = alg.named("data_plane_relay", since=mark)
                assert PINHOLE_RULE in str(warning["reason"]), warning
            else:
                assert alg.named("data_plane_kernel", since=mark)
            result = run_transfer(lab, "curl-epsv", server.target, "f.bin", tmp_path / "f.bin")
            assert result.ok and result.sha256 == digest, result.detail
            assert wait_until(lambda m=mark: bool(alg.named("data_finished", since=m)), 10)
            (ended,) = alg.named("data_finished", since=mark)
            assert ended["data_plane"] == plane and ended["bytes_to_client"] == 1 << 20
    finally:
        lab.close()


def test_500_sessions_each_with_a_pinhole(env: Env, since: Baseline) -> None:
    """500 control sessions at once, each with its PORT's pinhole open (active mode: the
    server's range of passive ports is smaller than that); then each fetches through its own
    pinhole: every byte arrives, every transfer is counted, nothing is left open."""
    make_file(env.server.root, "small.bin", 1000, seed=11)
    code = """
import ftplib, socket, sys
server, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sessions = []
for _ in range(n):
    ftp = ftplib.FTP(server, timeout=20)
    ftp.login()
    ftp.voidcmd("TYPE I")
    listener = socket.create_server((me, 0))
    ftp.sendport(me, listener.getsockname()[1])
    sessions.append((ftp, listener))
print("OPEN", flush=True)
sys.stdin.readline()  # the test counts the pinholes now
ok = 0
for ftp, listener in sessions:
    ftp.putcmd("RETR small.bin")
    ftp.getresp()
    data, _ = listener.accept()
    body = b""
    while chunk := data.recv(65536):
        body += chunk
    data.close()
    ok += len(body) == 1000 and ftp.voidresp().startswith("226")
    ftp.quit()
print("OK", ok, flush=True)
"""
    me = str(env.lab.addresses.client_v4)
    argv = ["python3", "-c", code, str(env.server.address), me, "500"]
    client = env.lab.popen("cli", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdout.readline().strip() == "OPEN"
    assert len(pinhole_elements(env)) == 500
    out, _ = client.communicate("\n", timeout=120)
    assert out.strip() == "OK 500", out
    assert wait_until(lambda: len(finished(env, since)) == 500, 20), len(finished(env, since))
    ends = finished(env, since)
    assert all((e["bytes_to_client"], e["result"]) == (1000, "ok") for e in ends), ends[:3]
    baseline(env.alg)  # every session closed
    assert pinhole_elements(env) == []


def test_a_data_tuple_reused_while_in_time_wait(env: Env, since: Baseline) -> None:
    """Two active transfers in a row to the same client port: the server connects from port
    20 to the same gateway port twice, so the second SYN meets the first connection's
    conntrack in TIME_WAIT, which the kernel replaces; the second PORT's fresh pinhole
    admits it and both transfers are whole and counted."""
    code = """
import ftplib, hashlib, socket, sys
server, me = sys.argv[1], sys.argv[2]
ftp = ftplib.FTP(server, timeout=20)
ftp.login()
ftp.voidcmd("TYPE I")
port = None
for _ in range(2):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((me, port or 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    ftp.sendport(me, port)
    ftp.putcmd("RETR f.bin")
    ftp.getresp()
    data, peer = listener.accept()
    body = b""
    while chunk := data.recv(65536):
        body += chunk
    data.close()
    listener.close()
    print(peer[1], port, hashlib.sha256(body).hexdigest(), ftp.voidresp()[:3], flush=True)
ftp.quit()
"""
    me = str(env.lab.addresses.client_v4)
    out = env.lab.run("cli", ["python3", "-c", code, str(env.server.address), me], timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert len(rows) == 2 and rows[0][:2] == rows[1][:2], rows  # same 4-tuple both times
    assert all(row[2:] == [env.digest, "226"] for row in rows), rows
    assert wait_until(lambda: len(finished(env, since)) == 2, 10)
    assert [e["bytes_to_client"] for e in finished(env, since)] == [SIZE, SIZE]
    announced = ("rewrite", "announce_unchanged")
    listens = [e["listen"] for e in env.alg.events(since.log) if e["event"] in announced]
    assert len(listens) == 2 and listens[0] == listens[1], listens  # the same gateway port
