"""FTP through NAT64 (issue 15, docs/nat64.md) with real clients and servers: an IPv6-only
client (no IPv4 address but lo's) reaches IPv4-only servers at their 64:ff9b::/96 addresses
through ftpalg in transparent mode with `--nat64-prefix 64:ff9b::/96`, on a gateway whose
forward policy drops everything (only ftpalg can carry anything).

Servers, each bound to its IPv4 address only: pyftpdlib, vsftpd, pure-ftpd and proftpd (they
answer EPSV and EPRT |1| themselves), and a pure RFC 959 server (pyftpdlib without EPSV and EPRT:
ftpalg falls back to PASV/PORT). Clients: curl (EPSV, `--disable-epsv`, EPRT via `-P -`),
lftp passive and active, Python ftplib passive and active (EPSV/EPRT on IPv6), wget passive
and active (downloads only). Downloads and uploads of 0 bytes and 1 MiB against every server,
64 MiB against one server per client, sha256 checked. Plus: `ALGS`, `EPSV ALL`, `EPSV 2`, a
server that answers EPSV itself (the server's own log shows no PASV), an IPv6 destination
outside the prefix (an IPv6 server, reached untranslated) and an embedded address that is the
gateway itself (421). The same clients without ftpalg (Tayga): tests/lab/test_nat64_baseline.py.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import NAT64_MODES, FtpTarget, TransferResult, curl_transfer, run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.nat64 import (
    PREFIX,
    UPLOADS,
    add_server_address,
    client_ipv4_addresses,
    make_ipv6_only,
    nat64_target,
    synthesized,
)
from ftpalg.lab.netns import Lab
from ftpalg.lab.proftpd_server import start_proftpd
from ftpalg.lab.rfc959_server import start_rfc959
from ftpalg.lab.servers import FtpServer, make_file, sha256_file, start_server
from tests.lab.conftest import baseline, start_lab
from tests.requirements import need_tools

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

SERVERS = ("pyftpdlib", "vsftpd", "pure-ftpd", "proftpd", "rfc959")
SMALL = {"0B": 0, "1MiB": 1 << 20}
BIG = 64 << 20
_names = itertools.count()


@dataclass
class Nat64Lab:
    lab: Lab
    alg: AlgProcess
    servers: dict[str, FtpServer]
    v6_server: FtpServer  # a real IPv6 server: outside the prefix
    files: dict[tuple[str, int], str]  # (server, size) -> sha256 of f"{size}.bin"

    def target(self, server: str) -> FtpTarget:
        return nat64_target(self.servers[server])


@pytest.fixture(scope="module")
def nat64() -> Iterator[Nat64Lab]:
    need_tools("curl", "lftp", "wget")
    lab = start_lab()
    try:
        make_ipv6_only(lab)
        lab.sysctl("cli", "net.ipv4.ip_local_port_range", "20000 29999")
        apply_closed_gateway(lab, pinholes=True)  # the kernel data plane is there: not used
        a = lab.addresses
        servers = {
            kind: start_server(lab, kind, a.servers_v4[i]) for i, kind in enumerate(SERVERS[:3])
        }
        os.environ["FTPALG_LAB_LOG_COMMANDS"] = "1"  # the RFC 959 server logs what it got
        try:
            servers["rfc959"] = start_rfc959(lab, a.servers_v4[3])
        finally:
            os.environ.pop("FTPALG_LAB_LOG_COMMANDS", None)
        servers["proftpd"] = start_proftpd(lab, add_server_address(lab))
        v6_server = start_server(lab, "pyftpdlib", a.servers_v6[0])
        files = {
            (name, size): make_file(srv.root, f"{size}.bin", size)
            for name, srv in [*servers.items(), ("v6", v6_server)]
            for size in (*SMALL.values(), BIG)
        }
        args = ["--listen", "[::]:21", "--nat64-prefix", str(PREFIX)]
        alg = start_ftpalg(lab, args)
        yield Nat64Lab(lab, alg, servers, v6_server, files)
    finally:
        lab.close()


def transfer(
    setup: Nat64Lab, mode: str, server: str, size: int, upload: bool, tmp_path: Path
) -> None:
    """One transfer through the prefix; its bytes arrive intact (sha256)."""
    srv, target = setup.servers[server], setup.target(server)
    timeout = 30.0 + size / 20e6
    if upload:
        local = tmp_path / f"up{next(_names)}.bin"
        digest = make_file(tmp_path, local.name, size)
        result = run_transfer(
            setup.lab, mode, target, srv.upload_path(local.name), local, True, timeout
        )
        assert result is not None and result.ok, result and result.detail
        assert sha256_file(srv.uploaded(local.name)) == digest
        srv.uploaded(local.name).unlink()
    else:
        local = tmp_path / f"down{next(_names)}.bin"
        result = run_transfer(setup.lab, mode, target, f"{size}.bin", local, False, timeout)
        assert result is not None and result.ok, result and result.detail
        assert result.sha256 == setup.files[(server, size)] and result.nbytes == size
        local.unlink()


def test_the_client_is_ipv6_only(nat64: Nat64Lab) -> None:
    assert client_ipv4_addresses(nat64.lab) == ["127.0.0.1/8"]
    (note,) = nat64.alg.named("data_plane_relay")  # once, at start: the kernel plane runs
    assert note["sessions"] == "nat64 (64:ff9b::/96)" and "cannot join families" in note["reason"]
    server = nat64.servers["pyftpdlib"].address
    assert not nat64.lab.can_connect("cli", server, 21)  # no IPv4 path at all


DIRECTIONS = [
    (mode, upload)
    for mode in NAT64_MODES
    for upload in (False, True)
    if not upload or mode in UPLOADS
]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    ("mode", "upload"), DIRECTIONS, ids=[f"{m}-{'up' if u else 'down'}" for m, u in DIRECTIONS]
)
def test_transfers(nat64: Nat64Lab, mode: str, upload: bool, server: str, tmp_path: Path) -> None:
    """0 bytes and 1 MiB each way; 64 MiB against one server per client mode (rotating)."""
    check = baseline(nat64.alg)
    sizes = list(SMALL.values())
    if SERVERS[list(NAT64_MODES).index(mode) % len(SERVERS)] == server:
        sizes.append(BIG)
    for size in sizes:
        transfer(nat64, mode, server, size, upload, tmp_path)
    opened = check.named("session_opened")
    assert opened, "no session through ftpalg"
    for line in opened:
        address = nat64.servers[server].address
        assert line["nat64"] is True and line["data_plane"] == "relay", line
        assert line["server"] == f"{address}:21", line
        assert line["server_face"] == f"[{synthesized(address)}]:21"  # type: ignore[arg-type]


def ftplib_session(lab: Lab, target: FtpTarget, script: str) -> Any:
    """Run `script` (Python, with `ftp` logged in, `result` a dict it fills) in the client
    namespace; the dict comes back as JSON."""
    code = (
        "import ftplib, hashlib, json, sys\n"
        f"ftp = ftplib.FTP(timeout=20)\nftp.connect({str(target.address)!r}, {target.port})\n"
        f"ftp.login({target.user or 'anonymous'!r}, {target.password or 'x'!r})\n"
        "result = {}\n" + script + "\nftp.quit()\nprint(json.dumps(result))\n"
    )
    run = lab.run("cli", [sys.executable, "-c", code], timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def raw_session(lab: Lab, host: IPv4Address | Any, lines: list[str]) -> list[str]:
    """Send lines one by one (`scripted client`), each reply as received."""
    argv = [sys.executable, "-m", "ftpalg.lab.scripted", "client", str(host), "21"]
    run = lab.run("cli", argv + [line + "\r\n" for line in lines], timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    replies: list[str] = json.loads(run.stdout)
    return replies


def test_algs_commands_are_answered_by_ftpalg(nat64: Nat64Lab) -> None:
    """RFC 6384's ALGS STATUS64/ENABLE64/DISABLE64 get 216 from ftpalg; the server never
    sees them."""
    check = baseline(nat64.alg, tuple(nat64.servers.values()))
    target = nat64.target("rfc959")
    lines = [
        "USER lab",
        "PASS lab",
        "ALGS STATUS64",
        "ALGS DISABLE64",
        "ALGS STATUS64",
        "ALGS ENABLE64",
        "ALGS STATUS64",
        "QUIT",
    ]
    replies = raw_session(nat64.lab, target.address, lines)
    assert replies[1].startswith("331") and replies[2].startswith("230"), replies
    for reply in replies[3:8]:
        assert reply.startswith("216 "), replies
    assert "ALGS" not in check.server_log(nat64.servers["rfc959"])


def test_epsv_2_and_epsv_all(nat64: Nat64Lab) -> None:
    """`EPSV 2` (what wget sends; an IPv4 server refuses it with 522) gets a 229; after
    `EPSV ALL` the session goes on with EPSV, and a transfer arrives intact."""
    baseline(nat64.alg)
    target = nat64.target("vsftpd")
    script = (
        "result['epsv2'] = ftp.sendcmd('EPSV 2')\n"
        "result['all'] = ftp.sendcmd('EPSV ALL')\n"
        "digest = hashlib.sha256()\n"
        "result['retr'] = ftp.retrbinary('RETR 1048576.bin', digest.update)\n"
        "result['sha256'] = digest.hexdigest()\n"
    )
    result = ftplib_session(nat64.lab, target, script)
    assert result["epsv2"].startswith("229 ") and "(|||" in result["epsv2"], result
    assert result["all"].startswith("200"), result
    assert result["retr"].startswith("226"), result
    assert result["sha256"] == nat64.files[("vsftpd", 1 << 20)]


def test_a_server_that_answers_epsv_is_not_sent_pasv(nat64: Nat64Lab, tmp_path: Path) -> None:
    """vsftpd answers EPSV over IPv4: no PASV upstream. The RFC 959 server refuses it: ftpalg
    sends PASV (both servers' own logs say what they received)."""
    vsftpd, rfc959 = nat64.servers["vsftpd"], nat64.servers["rfc959"]
    check = baseline(nat64.alg, (vsftpd, rfc959))
    for server in ("vsftpd", "rfc959"):
        result = curl_transfer(
            nat64.lab, nat64.target(server), "1048576.bin", tmp_path / f"{server}.bin"
        )
        assert result.ok and result.sha256 == nat64.files[(server, 1 << 20)], result.detail
    seen = check.server_log(vsftpd)
    assert '"EPSV"' in seen and '"PASV"' not in seen, seen
    seen = check.server_log(rfc959)
    assert "<- EPSV" in seen and "<- PASV" in seen, seen
    translated = [(t["client"], t["upstream"]) for t in check.named("nat64_translated")]
    assert translated == [("EPSV", "PASV")]  # the RFC 959 server's session only


def test_an_ipv6_destination_outside_the_prefix_is_not_translated(
    nat64: Nat64Lab, tmp_path: Path
) -> None:
    srv = nat64.v6_server
    check = baseline(nat64.alg, (srv,))
    for mode in ("curl-epsv", "curl-eprt"):
        result = run_transfer(
            nat64.lab, mode, srv.target, "1048576.bin", tmp_path / "v6.bin", False, 30.0
        )
        assert isinstance(result, TransferResult) and result.ok, result and result.detail
        assert result.sha256 == nat64.files[("v6", 1 << 20)]
    opened = check.named("session_opened")
    assert len(opened) == 2
    for line in opened:
        assert line["nat64"] is False and line["server"] == f"[{srv.address}]:21", line
        assert line["server_face"] == f"[{srv.address}]:21", line
        assert line["data_plane"] == "kernel", line  # the kernel plane is there; NAT64: relay
    gateway = str(nat64.lab.addresses.gw_outside_v6)  # the server saw ftpalg, over IPv6
    assert check.seen_clients(srv) == {gateway}


def test_an_embedded_address_of_the_gateway_itself_gets_421(nat64: Nat64Lab) -> None:
    check = baseline(nat64.alg)
    gateway = synthesized(nat64.lab.addresses.gw_outside_v4)
    replies = raw_session(nat64.lab, gateway, ["QUIT"])
    assert replies[0].startswith("421 "), replies
    (refused,) = check.named("session_refused")
    assert "no FTP server behind this address" in refused["reason"], refused
    assert not check.named("session_opened")


def test_reverse_mode_with_an_ipv6_listener_and_an_ipv4_upstream(
    nat64: Nat64Lab, tmp_path: Path
) -> None:
    """No prefix: a reverse-mode ftpalg listening on IPv6 in front of the IPv4 server without
    EPSV translates the same way (the core decides by the faces)."""
    lab, srv = nat64.lab, nat64.servers["rfc959"]
    listen = FtpTarget(lab.addresses.gw_inside_v6, 2121, srv.user, srv.password)
    args = ["--listen", f"[{listen.address}]:2121", "--upstream", f"{srv.address}:21"]
    reverse = start_ftpalg(lab, [*args, "--data-plane", "relay", "--data-ports", "30000-30999"])
    try:
        result = run_transfer(lab, "curl-epsv", listen, "1048576.bin", tmp_path / "r", False, 30)
        assert result is not None and result.ok, result and result.detail
        assert result.sha256 == nat64.files[("rfc959", 1 << 20)]
        local = tmp_path / "reverse-up.bin"
        digest = make_file(tmp_path, local.name, 1 << 20)
        result = run_transfer(
            lab, "ftplib-active", listen, srv.upload_path(local.name), local, True, 30
        )
        assert result is not None and result.ok, result and result.detail
        assert sha256_file(srv.uploaded(local.name)) == digest
        opened = reverse.named("session_opened")
        assert [(o["mode"], o["nat64"]) for o in opened] == [("reverse", True)] * 2, opened
        assert {t["upstream"] for t in reverse.named("nat64_translated")} == {"PASV", "PORT"}
    finally:
        reverse.stop()
