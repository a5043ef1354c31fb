"""FTPS, hostile clients in the middle of a PROT P transfer (issue 13): a TLS alert record,
a TCP RST, or a close_notify, on the data connection or (passthrough) the control one.

The session gets a clear FTP reply or a clean close, ftpalg keeps running, and another
session's PROT P download that runs at the same time arrives with the right sha256.

- terminate (reverse mode, ftpalg the TLS server on both connections, a plain vsftpd behind
  it): the data connection is ftpalg's TLS relay, so the abort lands in ftpalg; the plain
  server sees its data connection cut and answers 426, which the client gets.
- passthrough (transparent mode, a vsftpd requiring TLS): ftpalg relays the control
  connection unread and its data goes through the kernel window; an abort on the data
  connection gets the server's reply through ftpalg, an abort on the control connection
  ends that session (and its window) only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import FtpServer, make_file, self_signed, start_server
from tests.lab.conftest import start_lab
from tests.lab.ftps_client import PREAMBLE

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

BIG = 64 << 20  # larger than every buffer on the way: an abort after 1 MiB is mid-transfer
PORT = 2121

CLIENT = (
    PREAMBLE
    + """
import ftplib, hashlib, json, os, socket, ssl, struct, sys, time
host, port, how, where, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


def attempt(fn):
    try:
        return fn()
    except ftplib.Error as exc:  # an FTP reply
        return str(exc)
    except (OSError, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"


def abort(conn, *more):
    raw = socket.socket(fileno=os.dup(conn.fileno()))  # closed last: its close is the RST
    if how == "alert":  # a fatal alert record (handshake_failure) as a broken peer sends it
        raw.sendall(bytes([21, 3, 3, 0, 2, 2, 40]))
        time.sleep(0.3)
    elif how == "rst":
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif how == "close_notify":
        conn.settimeout(2)
        attempt(conn.unwrap)
    for other in (*more, conn):
        other.close()
    raw.close()


ftp = ReusingFTP_TLS(context=ctx, timeout=20)
ftp.connect(host, port)
ftp.auth()
ftp.login("anonymous", "lab@")
ftp.prot_p()
out = {}
if how == "good":  # a slow, whole download that runs while the others misbehave
    h, first = hashlib.sha256(), [True]

    def block(data):
        h.update(data)
        if first[0]:
            first[0] = False
            print(json.dumps({"started": True}), flush=True)
        time.sleep(0.003)

    ftp.retrbinary("RETR " + name, block, blocksize=65536)
    out["sha256"] = h.hexdigest()
    ftp.quit()
    print(json.dumps(out), flush=True)
    sys.exit(0)
conn, _ = ftp.ntransfercmd("RETR " + name)
got = 0
while got < (1 << 20):
    got += len(conn.recv(65536))
if where == "control":  # the control connection goes; the data one is read to its end
    abort(ftp.sock, ftp.file)
    conn.settimeout(20)
    out["drained"] = attempt(lambda: sum(iter(lambda: len(conn.recv(1 << 16)), 0)))
else:
    abort(conn)
    out["reply"] = attempt(ftp.getresp)
    out["noop"] = attempt(lambda: ftp.voidcmd("NOOP"))
print(json.dumps(out), flush=True)
"""
)


@dataclass
class Site:
    lab: Lab
    server: FtpServer
    alg: AlgProcess
    host: str
    port: int
    digest: str


def start_good(site: Site) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", CLIENT, site.host, str(site.port), "good", "-", "big.bin"]
    good = site.lab.popen(site.lab.client_role, argv, stdout=subprocess.PIPE, text=True)
    assert good.stdout is not None
    assert json.loads(good.stdout.readline()) == {"started": True}
    return good


def hostile(site: Site, how: str, where: str) -> dict[str, str]:
    argv = [sys.executable, "-c", CLIENT, site.host, str(site.port), how, where, "big.bin"]
    run = site.lab.run(site.lab.client_role, argv, timeout=60)
    assert run.returncode == 0, run.stderr
    result: dict[str, str] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def finish_good(site: Site, good: subprocess.Popen[str]) -> None:
    try:
        rest, _ = good.communicate(timeout=60)
    finally:
        if good.poll() is None:
            good.kill()
    assert json.loads(rest.strip().splitlines()[-1])["sha256"] == site.digest
    assert site.alg.proc.poll() is None  # ftpalg keeps running


@pytest.fixture(scope="module")
def terminate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    lab = start_lab()
    try:
        lab.server_role, lab.client_role = "cli", "srv"
        a = lab.addresses
        server = start_server(lab, "vsftpd", a.client_v4, PORT)
        digest = make_file(server.root, "big.bin", BIG, seed=31)
        cert, key = self_signed(tmp_path_factory.mktemp("tls"))
        host = str(a.gw_outside_v4)
        args = ["--listen", f"{host}:{PORT}", "--upstream", f"{a.client_v4}:{PORT}"]
        args += ["--tls", "terminate", "--tls-cert", str(cert), "--tls-key", str(key)]
        yield Site(lab, server, start_ftpalg(lab, args), host, PORT, digest)
    finally:
        lab.close()


@pytest.mark.parametrize("how", ["alert", "rst", "close_notify"])
def test_terminate_abort_mid_prot_p_transfer(terminate: Site, how: str) -> None:
    site = terminate
    mark = site.alg.mark()
    good = start_good(site)
    got = hostile(site, how, "data")
    assert got["reply"].startswith("426"), got  # the server's own reply: its data was cut
    assert got["noop"].startswith("200"), got  # the control session goes on
    finish_good(site, good)
    finished = site.alg.named("data_finished", since=mark)
    assert sorted(e["result"] == "ok" for e in finished) == [False, True], finished
    (cut,) = [e for e in finished if e["result"] != "ok"]
    assert cut["level"] == "warning" and cut["bytes_to_client"] >= 1 << 20, cut


@pytest.fixture(scope="module")
def passthrough() -> Iterator[Site]:
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=True)
        server = start_server(lab, "vsftpd-tls", lab.addresses.servers_v4[1])
        digest = make_file(server.root, "big.bin", BIG, seed=32)
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "kernel"])
        yield Site(lab, server, alg, str(server.address), 21, digest)
    finally:
        lab.close()


def window_count(lab: Lab) -> int:
    out = lab.run("gw", ["nft", "-j", "list", "set", "inet", "ftpalg", "win4"])
    assert out.returncode == 0, out.stderr
    sets = [x["set"] for x in json.loads(out.stdout)["nftables"] if "set" in x]
    return len(sets[0].get("elem", []))


@pytest.mark.parametrize(
    ("how", "where"),
    [("alert", "data"), ("rst", "data"), ("alert", "control"), ("rst", "control")],
)
def test_passthrough_abort_mid_prot_p_transfer(passthrough: Site, how: str, where: str) -> None:
    site = passthrough
    mark = site.alg.mark()
    good = start_good(site)
    got = hostile(site, how, where)
    if where == "data":  # the server's reply, relayed unread through ftpalg
        assert got["reply"].startswith("426"), got
        assert got["noop"].startswith("200"), got
    else:  # whatever the server does with the data, the session ends in ftpalg (below)
        assert "drained" in got, got
    finish_good(site, good)
    assert wait_until(lambda: window_count(site.lab) == 0, 10)  # both sessions' windows gone
    closed = site.alg.named("session_closed", since=mark)
    assert len(closed) == 2, closed
    assert not site.alg.named("internal_error", since=mark)
