"""`tls = terminate` (issue 13; core/tls_terminate.py, proxy/tls_*.py, docs/ftps.md): ftpalg in
reverse mode is the TLS server for FTPS clients of a plain legacy vsftpd on the private side.
Real clients (curl --ssl-reqd, Python ftplib FTP_TLS with PROT P and session reuse, lftp with
ssl-force), sha256 on every transfer; the legacy server's protocol log never shows AUTH,
PBSZ or PROT, and never a password before TLS; `require_tls` refuses a plain login; PROT C
carries plain data; a client that sends garbage instead of a ClientHello, or stalls its
handshake, loses its own session only."""

from __future__ import annotations

import json
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
from tests.lab.ftps_client import PREAMBLE

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

SIZE = 2 << 20
PORT = 2121
IMPLICIT = 990

FTPLIB = (
    PREAMBLE
    + """
import ftplib, hashlib, json, ssl, sys
host, port, prot, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


ftp = ReusingFTP_TLS(context=ctx, timeout=20)
ftp.connect(host, port)
out = {"feat": ftp.sendcmd("FEAT")}
out["auth"] = ftp.auth()
try:
    ftp.sendcmd("PROT P")
except ftplib.Error as exc:
    out["prot_first"] = str(exc)
ftp.login("anonymous", "lab@")
if prot in ("P", "PA"):
    ftp.prot_p()
    ftp.set_pasv(prot == "P")  # PA: active mode, PORT/EPRT
else:
    out["pbsz"] = ftp.sendcmd("PBSZ 0")
    out["prot"] = ftp.sendcmd("PROT C")
try:
    ftp.sendcmd("AUTH TLS")
except ftplib.Error as exc:
    out["auth_again"] = str(exc)
data = bytearray()
ftp.retrbinary("RETR " + name, data.extend)
out["sha256"] = hashlib.sha256(data).hexdigest()
ftp.quit()
print(json.dumps(out), flush=True)
"""
)


@dataclass
class Site:
    lab: Lab
    server: FtpServer
    alg: AlgProcess
    host: str
    digest: str
    cert: Path
    key: Path


def start_alg(lab: Lab, host: str, upstream: str, cert: Path, key: Path, *more: str) -> AlgProcess:
    args = ["--listen", f"{host}:{PORT}", "--upstream", f"{upstream}:{PORT}"]
    args += ["--listen-implicit", f"{host}:{IMPLICIT}"]
    args += ["--tls", "terminate", "--tls-cert", str(cert), "--tls-key", str(key), *more]
    return start_ftpalg(lab, args)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Reverse mode (the relay plane): a plain vsftpd on the private side, clients outside."""
    lab = start_lab()
    try:
        lab.server_role, lab.client_role = "cli", "srv"
        a = lab.addresses
        server = start_server(lab, "vsftpd", a.client_v4, PORT)
        digest = make_file(server.root, "f.bin", SIZE, seed=21)
        cert, key = self_signed(tmp_path_factory.mktemp("tls"))
        host = str(a.gw_outside_v4)
        alg = start_alg(lab, host, str(a.client_v4), cert, key, "--log-level", "debug")
        yield Site(lab, server, alg, host, digest, cert, key)
    finally:
        lab.close()


def curl(site: Site, args: list[str]) -> bool:
    argv = ["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "30", *args]
    run = site.lab.run("srv", argv, timeout=40)
    print(run.stderr)  # shown when the test fails
    return run.returncode == 0


def ftplib_run(site: Site, prot: str) -> dict[str, str]:
    argv = [sys.executable, "-c", FTPLIB, site.host, str(PORT), prot, "f.bin"]
    run = site.lab.run("srv", argv, timeout=60)
    assert run.returncode == 0, run.stderr
    result: dict[str, str] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def test_terminate_with_every_client(site: Site, tmp_path: Path) -> None:
    mark, before = site.alg.mark(), site.server.log_text()
    url = f"ftp://{site.host}:{PORT}"
    assert curl(site, ["-o", str(tmp_path / "c.bin"), f"{url}/f.bin"])
    assert sha256_file(tmp_path / "c.bin") == site.digest
    up = make_file(tmp_path, "up.bin", SIZE + 5, seed=22)
    assert curl(site, ["-T", str(tmp_path / "up.bin"), f"{url}/{site.server.upload_path('u.bin')}"])
    assert sha256_file(site.server.uploaded("u.bin")) == up
    got = ftplib_run(site, "P")
    assert got["sha256"] == site.digest, got
    assert " AUTH TLS" in got["feat"] and " PBSZ" in got["feat"] and " PROT" in got["feat"]
    assert got["auth"].startswith("234"), got
    assert got["prot_first"].startswith("503"), got  # PROT before PBSZ (and before AUTH)
    assert got["auth_again"].startswith("503"), got
    script = (
        "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no;"
        " set net:max-retries 1; set net:timeout 10;"
        f" open -u anonymous,lab@ {url}; get f.bin -o {tmp_path / 'l.bin'}"
    )
    run = site.lab.run("srv", ["lftp", "-c", script], timeout=40)
    assert run.returncode == 0, run.stderr
    assert sha256_file(tmp_path / "l.bin") == site.digest
    assert len(site.alg.named("tls_terminate", since=mark)) >= 4
    time.sleep(0.5)
    seen = site.server.log_text()[len(before) :]
    for verb in ("AUTH", "PBSZ", "PROT"):
        assert f'"{verb}' not in seen, seen[-2000:]
    assert "RETR" in seen and "STOR" in seen  # the plain commands did arrive
    # debug: the decrypted lines are traced, the password never
    commands = [e["line"] for e in site.alg.named("command", since=mark)]
    assert "PASS ****\\r\\n" in commands and "RETR f.bin\\r\\n" in commands, commands
    assert "AUTH TLS\\r\\n" in commands  # answered by ftpalg itself, traced too
    assert b"lab@" not in site.alg.log_since(mark)


def test_implicit_ftps(site: Site, tmp_path: Path) -> None:
    """curl's ftps:// is implicit FTPS: TLS from the first byte on port 990, no AUTH."""
    mark, before = site.alg.mark(), site.server.log_text()
    url = f"ftps://{site.host}:{IMPLICIT}"
    assert curl(site, ["-o", str(tmp_path / "i.bin"), f"{url}/f.bin"])
    assert sha256_file(tmp_path / "i.bin") == site.digest
    up = make_file(tmp_path, "iu.bin", SIZE + 3, seed=23)
    target = f"{url}/{site.server.upload_path('iu.bin')}"
    assert curl(site, ["-T", str(tmp_path / "iu.bin"), target])
    assert sha256_file(site.server.uploaded("iu.bin")) == up
    assert not site.alg.named("tls_terminate", since=mark)  # no AUTH was needed
    time.sleep(0.5)
    seen = site.server.log_text()[len(before) :]
    assert "RETR" in seen and '"AUTH' not in seen and '"PROT' not in seen
    # a plain client on the implicit port gets no banner in clear
    cmd = (
        "import socket, sys\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
        "s.sendall(b'USER anonymous\\r\\n'); print(repr(s.recv(1024)[:3]))\n"
    )
    run = site.lab.run("srv", [sys.executable, "-c", cmd, site.host, str(IMPLICIT)], timeout=20)
    assert "220" not in run.stdout, run.stdout


def test_prot_p_in_active_mode(site: Site) -> None:
    """PORT with PROT P: ftpalg dials the client and is the TLS server on that leg too."""
    mark = site.alg.mark()
    assert ftplib_run(site, "PA")["sha256"] == site.digest
    finished = site.alg.named("data_finished", since=mark)
    assert finished and all(e["mode"] == "active" for e in finished), finished


def test_ipv6(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The same over IPv6: curl (EPSV) and ftplib with PROT P, sha256 checked."""
    lab = start_lab()
    try:
        lab.server_role, lab.client_role = "cli", "srv"
        a = lab.addresses
        server = start_server(lab, "vsftpd", a.client_v6, PORT)
        digest = make_file(server.root, "f.bin", SIZE, seed=24)
        cert, key = self_signed(tmp_path_factory.mktemp("tls6"))
        args = ["--listen", f"[{a.gw_outside_v6}]:{PORT}", "--upstream", f"[{a.client_v6}]:{PORT}"]
        args += ["--tls", "terminate", "--tls-cert", str(cert), "--tls-key", str(key)]
        alg = start_ftpalg(lab, args)
        site = Site(lab, server, alg, str(a.gw_outside_v6), digest, cert, key)
        url = f"ftp://[{a.gw_outside_v6}]:{PORT}/f.bin"
        assert curl(site, ["-g", "-o", str(tmp_path / "6.bin"), url])
        assert sha256_file(tmp_path / "6.bin") == digest
        assert ftplib_run(site, "P")["sha256"] == digest
    finally:
        lab.close()


PEER_CERT = """
import socket, ssl, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.recv(1024); s.sendall(b"AUTH TLS\\r\\n"); s.recv(1024)
ctx = ssl.create_default_context(); ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
print(ctx.wrap_socket(s).getpeercert(binary_form=True).hex())
"""


def test_sighup_reloads_the_certificate(site: Site, tmp_path: Path) -> None:
    """New sessions present the certificate the files hold at the SIGHUP; files that do not
    load are reported and the previous certificate stays."""
    import shutil
    import signal

    def presented() -> str:
        argv = [sys.executable, "-c", PEER_CERT, site.host, str(PORT)]
        run = site.lab.run("srv", argv, timeout=20)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    def sighup() -> dict[str, object]:
        mark = site.alg.mark()
        site.alg.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        events = ("reloaded", "reload_failed")
        while not (done := [e for e in site.alg.events(mark) if e["event"] in events]):
            assert time.monotonic() < deadline, "no reload event"
            time.sleep(0.05)
        return done[0]

    before = presented()
    cert2, key2 = self_signed(tmp_path)
    shutil.copy(cert2, site.cert)
    shutil.copy(key2, site.key)
    assert sighup()["event"] == "reloaded"
    after = presented()
    assert after != before
    site.cert.write_text("not a certificate\n")
    reloaded = sighup()
    assert reloaded["event"] == "reload_failed" and "tls_cert" in str(reloaded["error"])
    assert presented() == after  # the previous certificate stays
    shutil.copy(cert2, site.cert)
    assert ftplib_run(site, "P")["sha256"] == site.digest


def test_prot_c_carries_plain_data(site: Site) -> None:
    got = ftplib_run(site, "C")
    assert got["sha256"] == site.digest
    assert got["pbsz"].startswith("200") and got["prot"].startswith("200"), got
    # every session of tls = terminate is relayed (its data may be TLS): the start line says so
    assert site.alg.named("started")[0]["data_plane"] == "relay"
    assert {e["data_plane"] for e in site.alg.named("session_opened")} == {"relay"}


def test_garbage_and_a_stalled_handshake_lose_only_their_session(site: Site) -> None:
    cmd = (
        "import socket, sys, time\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=40)\n"
        "s.recv(1024); s.sendall(b'AUTH TLS\\r\\n'); print(s.recv(1024)[:3].decode())\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n' + bytes(300))\n"
        "print(repr(s.recv(1024)))\n"
    )
    run = site.lab.run("srv", [sys.executable, "-c", cmd, site.host, str(PORT)], timeout=30)
    lines = run.stdout.split()
    assert lines[0] == "234", run.stdout + run.stderr
    assert site.alg.named("tls_handshake_failed")
    assert ftplib_run(site, "P")["sha256"] == site.digest  # others unaffected


def test_a_stalled_handshake_times_out(site: Site) -> None:
    """A client that sends AUTH TLS and then nothing is closed after the line timeout."""
    lab, server = site.lab, site.server
    site.alg.stop()
    alg = start_alg(lab, site.host, str(server.address), site.cert, site.key, "--line-timeout", "2")
    try:
        cmd = (
            "import socket, sys, time\n"
            "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)\n"
            "s.recv(1024); s.sendall(b'AUTH TLS\\r\\n'); print(s.recv(1024)[:3].decode())\n"
            "t = time.monotonic(); rest = s.recv(1024)\n"
            "print(repr(rest), round(time.monotonic() - t))\n"
        )
        run = lab.run("srv", [sys.executable, "-c", cmd, site.host, str(PORT)], timeout=30)
        lines = run.stdout.splitlines()
        assert lines[0] == "234", run.stdout + run.stderr
        rest, seconds = lines[1].split()
        assert rest == "b''" and 1 <= int(seconds) <= 5, lines
        assert len(alg.named("tls_handshake_failed")) == 1
        assert ftplib_run(site, "P")["sha256"] == site.digest  # others unaffected
    finally:
        alg.stop()
        site.alg = start_alg(lab, site.host, str(server.address), site.cert, site.key)


DATA_GARBAGE = """
import ftplib, hashlib, json, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
ftp = ftplib.FTP_TLS(context=ctx, timeout=20)
ftp.connect(sys.argv[1], int(sys.argv[2]))
ftp.auth(); ftp.login("anonymous", "lab@"); ftp.prot_p()
conn, _ = ftplib.FTP.ntransfercmd(ftp, "RETR f.bin")  # PROT P, but no TLS on it
conn.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n" + bytes(200))
conn.settimeout(20)
while conn.recv(65536):
    pass
conn.close()
out = {}
try:
    out["after"] = ftp.voidresp()
except ftplib.Error as exc:
    out["after"] = str(exc)
out["noop"] = ftp.voidcmd("NOOP")
ftp.quit()
print(json.dumps(out))
"""


def test_garbage_on_a_prot_p_data_connection_loses_that_transfer_only(site: Site) -> None:
    mark = site.alg.mark()
    argv = [sys.executable, "-c", DATA_GARBAGE, site.host, str(PORT)]
    run = site.lab.run("srv", argv, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["noop"].startswith("200"), got  # the control session goes on
    (finished, *_) = site.alg.named("data_finished", since=mark)
    assert "handshake" in json.dumps(finished), finished
    assert ftplib_run(site, "P")["sha256"] == site.digest


def test_require_tls_refuses_a_plain_login(site: Site) -> None:
    lab, server = site.lab, site.server
    site.alg.stop()
    alg = start_alg(lab, site.host, str(server.address), site.cert, site.key, "--require-tls")
    try:
        before = server.log_text()
        cmd = (
            "import ftplib, sys\n"
            "f = ftplib.FTP(); f.connect(sys.argv[1], int(sys.argv[2]), timeout=10)\n"
            "try:\n    f.login('anonymous', 'secret@')\n"
            "except ftplib.error_perm as exc:\n    print(exc)\n"
        )
        run = lab.run("srv", [sys.executable, "-c", cmd, site.host, str(PORT)], timeout=30)
        assert run.stdout.startswith("530"), run.stdout + run.stderr
        time.sleep(0.5)
        assert "secret@" not in server.log_text()[len(before) :]
        assert ftplib_run(site, "P")["sha256"] == site.digest  # TLS logins still work
    finally:
        alg.stop()
        site.alg = start_alg(lab, site.host, str(server.address), site.cert, site.key)


def test_tls_ciphers_and_min_version(site: Site, tmp_path: Path) -> None:
    """`--tls-ciphers`: a curl limited to TLS 1.2 gets the one suite allowed; `--tls-min-version
    1.3`: that curl is refused in the handshake, a TLS 1.3 curl still downloads."""
    lab, server = site.lab, site.server
    url = f"ftp://{site.host}:{PORT}/f.bin"

    def curl_v(*args: str) -> tuple[int, str]:
        argv = ["curl", "-sS", "-v", "--ssl-reqd", "-k", "--max-time", "30", *args]
        argv += ["-o", str(tmp_path / "t.bin"), url]
        run = lab.run("srv", argv, timeout=40)
        return run.returncode, run.stderr

    site.alg.stop()
    more = ("--tls-ciphers", "ECDHE+CHACHA20")
    alg = start_alg(lab, site.host, str(server.address), site.cert, site.key, *more)
    try:
        rc, err = curl_v("--tls-max", "1.2")
        assert rc == 0 and "TLSv1.2 / ECDHE-RSA-CHACHA20-POLY1305" in err, err[-2000:]
        assert sha256_file(tmp_path / "t.bin") == site.digest
        alg.stop()
        more = ("--tls-min-version", "1.3")
        alg = start_alg(lab, site.host, str(server.address), site.cert, site.key, *more)
        rc, err = curl_v("--tls-max", "1.2")
        assert rc == 35, err[-2000:]  # curl: SSL connect error
        assert alg.named("tls_handshake_failed")
        (tmp_path / "t.bin").unlink(missing_ok=True)
        rc, err = curl_v()
        assert rc == 0 and "TLSv1.3" in err, err[-2000:]
        assert sha256_file(tmp_path / "t.bin") == site.digest
    finally:
        alg.stop()
        site.alg = start_alg(lab, site.host, str(server.address), site.cert, site.key)
