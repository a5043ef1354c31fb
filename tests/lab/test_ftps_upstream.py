"""`tls_upstream = true` (issue 13; proxy/tls_upstream.py, tls_bio_leg.py, docs/ftps.md):
ftpalg in reverse mode terminates its clients' FTPS and speaks explicit FTPS itself to a
vsftpd that forces TLS for logins and data, with vsftpd's default `require_ssl_reuse=YES`:
every data connection ftpalg makes to it must resume the control connection's TLS session.
Real clients (curl --ssl-reqd, Python ftplib with PROT P passive and active, PROT C, plain),
sha256 on every transfer; vsftpd's own log shows ftpalg's AUTH TLS, PBSZ 0 and PROT P and
the transfers; a server without TLS makes ftpalg refuse the session with one 421 line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.netns import Lab
from ftpalg.lab.servers import FtpServer, make_file, self_signed, sha256_file, start_server
from tests.lab.conftest import start_lab
from tests.lab.test_ftps_terminate import FTPLIB

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

SIZE = 3 << 20
PORT = 2121

PLAIN = """
import ftplib, hashlib, json, sys
ftp = ftplib.FTP(timeout=20)
try:
    ftp.connect(sys.argv[1], int(sys.argv[2]))
except ftplib.Error as exc:  # a refused session: its one reply
    print(json.dumps({"banner": str(exc)}), flush=True)
    sys.exit(0)
out = {"banner": ftp.getwelcome()}
try:
    ftp.login("anonymous", "lab@")
except ftplib.Error as exc:
    out["login"] = str(exc)
else:
    data = bytearray()
    ftp.retrbinary("RETR " + sys.argv[3], data.extend)
    out["sha256"] = hashlib.sha256(data).hexdigest()
    ftp.quit()
print(json.dumps(out), flush=True)
"""


@dataclass
class Site:
    lab: Lab
    server: FtpServer
    alg: AlgProcess
    host: str
    digest: str


def start_alg(lab: Lab, host: str, upstream: str, tmp: Path) -> AlgProcess:
    cert, key = self_signed(tmp)
    args = ["--listen", f"{host}:{PORT}", "--upstream", f"{upstream}:{PORT}"]
    args += ["--tls", "terminate", "--tls-cert", str(cert), "--tls-key", str(key)]
    return start_ftpalg(lab, [*args, "--tls-upstream", "--connect-timeout", "2"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Reverse mode: vsftpd forcing TLS on the private side, FTPS clients outside."""
    lab = start_lab()
    try:
        lab.server_role, lab.client_role = "cli", "srv"
        a = lab.addresses
        server = start_server(lab, "vsftpd-tls", a.client_v4, PORT)
        digest = make_file(server.root, "f.bin", SIZE, seed=41)
        host = str(a.gw_outside_v4)
        alg = start_alg(lab, host, str(a.client_v4), tmp_path_factory.mktemp("tls"))
        yield Site(lab, server, alg, host, digest)
    finally:
        lab.close()


def python(site: Site, script: str, *args: str) -> dict[str, str]:
    return python_in(site.lab, site.alg, site.host, script, *args)


def python_in(lab: Lab, alg: AlgProcess, host: str, script: str, *args: str) -> dict[str, str]:
    argv = [sys.executable, "-c", script, host, str(PORT), *args]
    run = lab.run("srv", argv, timeout=60)
    assert run.returncode == 0, run.stderr + alg.tail(10)
    result: dict[str, str] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def test_curl_both_ways_over_tls_on_both_sides(site: Site, tmp_path: Path) -> None:
    mark, before = site.alg.mark(), site.server.log_text()
    url = f"ftp://{site.host}:{PORT}"
    base = ["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "30"]
    run = site.lab.run("srv", [*base, "-o", str(tmp_path / "c.bin"), f"{url}/f.bin"], timeout=40)
    assert run.returncode == 0, run.stderr + site.alg.tail(10)
    assert sha256_file(tmp_path / "c.bin") == site.digest
    up = make_file(tmp_path, "up.bin", SIZE + 9, seed=42)
    target = f"{url}/{site.server.upload_path('u.bin')}"
    run = site.lab.run("srv", [*base, "-T", str(tmp_path / "up.bin"), target], timeout=40)
    assert run.returncode == 0, run.stderr + site.alg.tail(10)
    assert sha256_file(site.server.uploaded("u.bin")) == up
    time.sleep(0.5)
    seen = site.server.log_text()[len(before) :]
    for line in ('"AUTH TLS"', '"PBSZ 0"', '"PROT P"', "OK DOWNLOAD", "OK UPLOAD"):
        assert line in seen, seen[-3000:]
    finished = site.alg.named("data_finished", since=mark)
    assert len(finished) == 2 and all(e["result"] == "ok" for e in finished), finished


@pytest.mark.parametrize("prot", ["P", "PA", "C"])
def test_ftplib_prot_p_passive_and_active_and_prot_c(site: Site, prot: str) -> None:
    """PROT P passive and active (the server dials ftpalg: ftpalg is still its TLS client),
    PROT C (the client's leg plain, the server's TLS)."""
    got = python(site, FTPLIB, prot, "f.bin")
    assert got["sha256"] == site.digest, got
    assert got["auth"].startswith("234") and got["auth_again"].startswith("503"), got
    for feature in (" AUTH TLS", " PBSZ", " PROT"):  # the server lists them too: once
        assert got["feat"].count(feature + "\n") == 1, got["feat"]


def test_a_plain_client_gets_the_servers_banner_and_its_file(site: Site) -> None:
    got = python(site, PLAIN, "f.bin")
    assert got["banner"].startswith("220 (vsFTPd"), got  # the server's own banner
    assert got["sha256"] == site.digest, got


def test_a_server_without_tls_refuses_the_session_in_one_line(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    lab = start_lab()
    try:
        lab.server_role, lab.client_role = "cli", "srv"
        a = lab.addresses
        server = start_server(lab, "vsftpd", a.client_v4, PORT)
        make_file(server.root, "f.bin", 1000, seed=43)
        host = str(a.gw_outside_v4)
        alg = start_alg(lab, host, str(a.client_v4), tmp_path_factory.mktemp("tls2"))
        got = python_in(lab, alg, host, PLAIN, "f.bin")
        assert got["banner"].startswith("421 "), got
        assert "AUTH TLS: the server answered" in got["banner"], got
        (failed,) = alg.named("upstream_connect_failed")
        assert "AUTH TLS" in failed["error"], failed
        assert alg.proc.poll() is None
    finally:
        lab.close()


UPSTREAM = """
import socket, ssl, sys
address, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
modes = sys.argv[5:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
listener = socket.create_server((address, port))
print("ready", flush=True)
for mode in modes:  # one connection per mode, in order
    conn, _ = listener.accept()
    conn.settimeout(20)
    if mode == "ok":
        conn.sendall(b"220-Welcome to a scripted server\\r\\n220 ready\\r\\n")
    else:
        conn.sendall(b"220 x\\r\\n")
    conn.recv(100)  # AUTH TLS
    if mode == "twice":
        conn.sendall(b"234 go\\r\\n200 and more\\r\\n")
    else:
        conn.sendall(b"234 go\\r\\n")
    if mode == "garbage":
        conn.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n" + bytes(100))
    if mode in ("garbage", "stall", "twice"):
        try:
            conn.recv(4096); conn.recv(4096)
        except OSError:
            pass
        conn.close()
        continue
    tls = ctx.wrap_socket(conn, server_side=True)
    lines = tls.makefile("rb")
    for line in lines:
        verb = line.split()[0].upper()
        if verb == b"PROT" and mode == "prot":
            tls.sendall(b"534 Not on this server.\\r\\n")
            continue
        reply = {b"USER": b"331 more", b"PASS": b"230 in", b"QUIT": b"221 bye"}.get(verb, b"200 ok")
        tls.sendall(reply + b"\\r\\n")
        if verb == b"QUIT":
            break
    tls.close()
"""


def test_a_server_that_does_not_go_along_refuses_that_session_only(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A server that answers AUTH TLS with 234 and then garbage, nothing, or two replies,
    or that refuses PROT P: each of those sessions gets one 421 naming why; a server that
    goes along (with a multi-line banner) serves the next session, whose client gets that
    banner; ftpalg keeps running."""
    lab = start_lab()
    try:
        lab.server_role, lab.client_role = "cli", "srv"
        a = lab.addresses
        tmp = tmp_path_factory.mktemp("hostile")
        cert, key = self_signed(tmp)
        modes = ["garbage", "stall", "twice", "prot", "ok"]
        argv = [sys.executable, "-c", UPSTREAM, str(a.client_v4), str(PORT), str(cert), str(key)]
        server = lab.popen("cli", [*argv, *modes], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        host = str(a.gw_outside_v4)
        alg = start_alg(lab, host, str(a.client_v4), tmp)
        login = "import ftplib, json, sys\nftp = ftplib.FTP(timeout=20)\n"
        login += "try:\n    ftp.connect(sys.argv[1], int(sys.argv[2]))\n"
        login += "except ftplib.Error as exc:\n    print(json.dumps({'refused': str(exc)}))\n"
        login += "else:\n    w = ftp.getwelcome(); ftp.login('a', 'b'); ftp.quit()\n"
        login += "    print(json.dumps({'banner': w}))\n"
        why = {
            "garbage": "TLS: ",
            "stall": "no FTPS negotiation within 2 s",
            "twice": "the server sent more than one reply",
            "prot": "PROT P: the server answered '534 Not on this server.'",
        }
        for mode in modes[:-1]:
            got = python_in(lab, alg, host, login)
            assert got["refused"].startswith("421 ") and why[mode] in got["refused"], (mode, got)
        got = python_in(lab, alg, host, login)
        assert got["banner"] == "220-Welcome to a scripted server\n220 ready", got
        assert len(alg.named("upstream_connect_failed")) == 4
        assert alg.proc.poll() is None
    finally:
        lab.close()
