"""Explicit FTPS through ftpalg (issue 13; core/tls.py, docs/ftps.md): real vsftpd with TLS
required for logins and data (require_ssl_reuse at its default), real clients (curl
--ssl-reqd, Python ftplib FTP_TLS with PROT P, lftp with ssl-force), sha256 on every transfer.

- passthrough (transparent default): after the server's 234 the control channel is relayed
  unread; on the kernel data plane a window lets this client's passive data to this server
  through a closed gateway, and nobody else's; the window closes with the session.
- on ftpalg's relay plane behind an ordinary masquerading gateway, FTPS works as it does
  with the kernel helper (the gateway's forwarding carries the data).
- refuse: AUTH gets 534 from ftpalg and never reaches the server (reverse-mode default).
Every TLS handshake and record that succeeds end to end also proves that ftpalg altered no
byte of the TLS stream: a changed byte fails the record's authentication.
"""

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
from ftpalg.lab.gateway import _replace_table, apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import FtpServer, make_file, sha256_file, start_server
from tests.lab.conftest import start_lab
from tests.lab.ftps_client import PREAMBLE

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

SIZE = 2 << 20

FTPLIB = (
    PREAMBLE
    + """
import ftplib, hashlib, json, ssl, sys
host, mode, name = sys.argv[1], sys.argv[2], sys.argv[3]


ftp = ReusingFTP_TLS(context=ctx, timeout=20)
ftp.connect(host, 21)
out = {}
try:
    out["auth"] = ftp.auth()
except ftplib.Error as exc:
    print(json.dumps({"auth_error": str(exc)}))
    sys.exit(0)
ftp.login("anonymous", "lab@")
ftp.prot_p()
if mode == "hold":                 # a TLS session that stays open until stdin says go
    print(json.dumps({"held": True}), flush=True)
    sys.stdin.readline()
data = bytearray()
ftp.retrbinary("RETR " + name, data.extend)
out["sha256"] = hashlib.sha256(data).hexdigest()
ftp.quit()
print(json.dumps(out), flush=True)
"""
)


def curl(lab: Lab, server: FtpServer, args: list[str]) -> subprocess.CompletedProcess[str]:
    argv = ["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "30", *args]
    return lab.run("cli", argv, timeout=40)


def curl_get(lab: Lab, server: FtpServer, out: Path) -> str | None:
    run = curl(lab, server, ["-o", str(out), f"ftp://{server.address}/f.bin"])
    return sha256_file(out) if run.returncode == 0 else None


def curl_put(lab: Lab, server: FtpServer, local: Path, name: str) -> bool:
    run = curl(
        lab, server, ["-T", str(local), f"ftp://{server.address}/{server.upload_path(name)}"]
    )
    return run.returncode == 0


def ftplib_get(lab: Lab, server: FtpServer) -> dict[str, str]:
    run = lab.run("cli", [sys.executable, "-c", FTPLIB, str(server.address), "get", "f.bin"])
    assert run.returncode == 0, run.stderr
    result: dict[str, str] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def lftp_get(lab: Lab, server: FtpServer, out: Path) -> str | None:
    script = (
        "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no;"
        " set net:max-retries 1; set net:timeout 10;"
        f" open -u anonymous,lab@ ftp://{server.address}; get f.bin -o {out}"
    )
    run = lab.run("cli", ["lftp", "-c", script], timeout=40)
    return sha256_file(out) if run.returncode == 0 and out.exists() else None


@dataclass
class Site:
    lab: Lab
    server: FtpServer
    alg: AlgProcess
    digest: str


# debug: the command/reply trace must stop where the control channel becomes TLS
DEBUG_KERNEL = ["--listen", "0.0.0.0:21", "--data-plane", "kernel", "--log-level", "debug"]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """A closed gateway (forward policy drop + the rule for ftpalg's tag), the kernel plane."""
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=True)
        server = start_server(lab, "vsftpd-tls", lab.addresses.servers_v4[1])
        digest = make_file(server.root, "f.bin", SIZE, seed=13)
        alg = start_ftpalg(lab, DEBUG_KERNEL)
        yield Site(lab, server, alg, digest)
    finally:
        lab.close()


def window_elements(lab: Lab) -> list[object]:
    out = lab.run("gw", ["nft", "-j", "list", "set", "inet", "ftpalg", "win4"])
    assert out.returncode == 0, out.stderr
    sets = [x["set"] for x in json.loads(out.stdout)["nftables"] if "set" in x]
    return list(sets[0].get("elem", []))


def test_passthrough_with_every_client(site: Site, tmp_path: Path) -> None:
    lab, server, alg = site.lab, site.server, site.alg
    mark = alg.mark()
    assert curl_get(lab, server, tmp_path / "curl.bin") == site.digest
    up = make_file(tmp_path, "up.bin", SIZE + 7, seed=14)
    assert curl_put(lab, server, tmp_path / "up.bin", "up.bin")
    assert sha256_file(server.uploaded("up.bin")) == up
    assert ftplib_get(lab, server)["sha256"] == site.digest
    assert lftp_get(lab, server, tmp_path / "lftp.bin") == site.digest
    switched = alg.named("tls_passthrough", since=mark)
    assert len(switched) >= 4 and all(e["command"].startswith("AUTH") for e in switched)
    windows = alg.named("tls_data_window", since=mark)
    assert windows and all(w["opened"] for w in windows), windows
    assert wait_until(lambda: window_elements(lab) == [], 10)  # closed with the sessions
    assert "AUTH TLS" in server.log_text()  # the server itself negotiated TLS
    opaque: set[str] = set()  # sessions whose control channel is TLS passed through
    traced: list[str] = []
    for e in alg.events(since=mark):
        if e["event"] == "tls_passthrough":
            opaque.add(e["session"])
        elif e["event"] in ("command", "reply"):
            assert e["session"] not in opaque, e  # nothing traced after the 234
            traced.append(e["line"])
    assert len(opaque) >= 4 and sum(line.startswith("AUTH") for line in traced) >= 4, traced
    assert sum(line.startswith("234") for line in traced) >= 4, traced


def test_the_window_is_this_clients_only(site: Site) -> None:
    """While a TLS session holds its window open, another address on the client's network
    cannot reach the server's passive ports through the gateway; the client can."""
    lab, server = site.lab, site.server
    thief = f"10.{lab.addresses.subnet}.1.3"
    lab.run("cli", ["ip", "addr", "add", f"{thief}/24", "dev", lab.ifnames.client], check=True)
    argv = [sys.executable, "-c", FTPLIB, str(server.address), "hold", "f.bin"]
    held = lab.popen("cli", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout is not None and held.stdin is not None
        assert json.loads(held.stdout.readline()) == {"held": True}
        assert len(window_elements(lab)) == 1
        lo, hi = server.passive_ports
        probe = (
            "import socket, sys\n"
            "s = socket.socket(); s.bind((sys.argv[1], 0)); s.settimeout(1.5)\n"
            "try:\n    s.connect((sys.argv[2], int(sys.argv[3]))); print('connected')\n"
            "except OSError as exc:\n    print('refused', exc)\n"
        )
        for port in (lo, (lo + hi) // 2, hi):
            out = lab.run("cli", ["python3", "-c", probe, thief, str(server.address), str(port)])
            assert out.stdout.startswith("refused"), (port, out.stdout)
        rest, _ = held.communicate("\n", timeout=30)
        assert json.loads(rest.strip().splitlines()[-1])["sha256"] == site.digest
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()


def test_refuse_answers_auth_and_the_server_never_sees_it(site: Site) -> None:
    lab, server = site.lab, site.server
    site.alg.stop()
    alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--tls", "refuse"])
    try:
        before = server.log_text()
        got = ftplib_get(lab, server)
        assert got["auth_error"].startswith("534 "), got
        (refused,) = alg.named("tls_refused")
        assert refused["command"].startswith("AUTH TLS"), refused
        time.sleep(0.5)
        assert "AUTH" not in server.log_text()[len(before) :]
    finally:
        alg.stop()
        site.alg = start_ftpalg(lab, DEBUG_KERNEL)


def masquerading_gateway(lab: Lab) -> str:
    """An ordinary NAT gateway: inside to outside forwarded and masqueraded, nothing else."""
    inside, outside = lab.ifnames.gw_inside, lab.ifnames.gw_outside
    return _replace_table(
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy drop;\n"
        "        ct state established,related accept\n"
        f'        iifname "{inside}" oifname "{outside}" ct state new accept\n'
        "    }\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f'        oifname "{outside}" masquerade\n'
        "    }\n"
    )


def test_relay_plane_behind_a_masquerading_gateway_is_as_good_as_the_kernel(
    tmp_path: Path,
) -> None:
    lab = start_lab()
    try:
        lab.nft("gw", masquerading_gateway(lab))
        server = start_server(lab, "vsftpd-tls", lab.addresses.servers_v4[1])
        digest = make_file(server.root, "f.bin", SIZE, seed=15)
        assert curl_get(lab, server, tmp_path / "kernel.bin") == digest  # no ALG at all
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "relay"])
        assert curl_get(lab, server, tmp_path / "relay.bin") == digest
        assert ftplib_get(lab, server)["sha256"] == digest
        (window, *_) = alg.named("tls_data_window")
        assert window["opened"] is False and "forwarding" in window["reason"]
        assert alg.named("tls_passthrough")
    finally:
        lab.close()
