"""NAT64 without an FTP ALG, and the same through ftpalg (issue 15, docs/nat64.md).

The prefix is routed to the gateway, and the gateway is either Tayga (a real userspace
stateless NAT64, no ALG: what NAT64 networks run) or ftpalg with `--nat64-prefix` on a gateway
that forwards nothing. The IPv6-only client reaches the IPv4-only servers under the
network-specific prefix 2001:db8:64::/96 (Tayga refuses documentation addresses under the
well-known prefix). Through Tayga the control connection works and a plain `EPSV` against a
server that knows it too; the failures NAT64 users report are reproduced — `EPSV 2` (wget)
answered 522 by an IPv4 server, `EPRT |2|` refused, a server without EPSV unusable from an
IPv6 client — and each of them works through ftpalg, alone (a gateway that forwards nothing)
or in front of Tayga (the deployment of docs/nat64.md: ftpalg's TPROXY rules take FTP before
the routing decision sends the prefix to Tayga's tun device; everything else goes to Tayga).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import run_transfer
from ftpalg.lab.gateway import apply_closed_gateway, apply_routing
from ftpalg.lab.nat64 import NSP, make_ipv6_only, nat64_target, start_tayga
from ftpalg.lab.netns import Lab
from ftpalg.lab.rfc959_server import start_rfc959
from ftpalg.lab.servers import FtpServer, make_file, start_server
from tests.lab.conftest import start_lab
from tests.requirements import need_tools

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]
SIZE = 1 << 20
_names = itertools.count()


@dataclass
class Gateway:
    kind: str  # "tayga", "ftpalg" or "ftpalg+tayga"
    lab: Lab
    servers: dict[str, FtpServer]
    files: dict[str, str]  # server -> sha256 of data.bin
    alg: AlgProcess | None


@pytest.fixture(scope="module", params=["tayga", "ftpalg", "ftpalg+tayga"])
def gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    need_tools("curl", "lftp", "wget", "tayga")
    lab = start_lab()
    try:
        make_ipv6_only(lab, (NSP,))
        a = lab.addresses
        servers = {
            "pyftpdlib": start_server(lab, "pyftpdlib", a.servers_v4[0]),
            "vsftpd": start_server(lab, "vsftpd", a.servers_v4[1]),
            "rfc959": start_rfc959(lab, a.servers_v4[3]),
        }
        files = {name: make_file(srv.root, "data.bin", SIZE) for name, srv in servers.items()}
        alg = None
        if "tayga" in request.param:
            apply_routing(lab)
            start_tayga(lab, NSP)
        else:
            apply_closed_gateway(lab)
        if "ftpalg" in request.param:
            alg = start_ftpalg(lab, ["--listen", "[::]:21", "--nat64-prefix", str(NSP)])
        yield Gateway(request.param, lab, servers, files, alg)
    finally:
        lab.close()


def login(server: FtpServer) -> list[str]:
    user = server.user or "anonymous"
    return [f"USER {user}", f"PASS {server.password or 'x'}"]


def raw(gateway: Gateway, server: str, lines: list[str]) -> list[str]:
    """The replies to `lines` sent one at a time after logging in, then QUIT."""
    srv = gateway.servers[server]
    host = str(nat64_target(srv, NSP).address)
    argv = [sys.executable, "-m", "ftpalg.lab.scripted", "client", host, "21"]
    argv += [line + "\r\n" for line in [*login(srv), *lines, "QUIT"]]
    run = gateway.lab.run("cli", argv, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    replies: list[str] = json.loads(run.stdout)
    assert replies[2].startswith("230"), replies  # logged in: the control path works
    return replies[3:-1]


def test_plain_epsv_to_a_server_that_knows_it_works_either_way(
    gateway: Gateway, tmp_path: Path
) -> None:
    """The NAT64 itself is sound: control, and EPSV against an EPSV-capable IPv4 server."""
    target = nat64_target(gateway.servers["pyftpdlib"], NSP)
    result = run_transfer(gateway.lab, "curl-epsv", target, "data.bin", tmp_path / "x", False, 30)
    assert result is not None and result.ok, result and result.detail
    assert result.sha256 == gateway.files["pyftpdlib"]


@pytest.mark.parametrize(
    ("server", "command", "refused"),
    [
        ("pyftpdlib", "EPSV 2", "522 "),
        ("vsftpd", "EPSV 2", "522 "),
        ("pyftpdlib", "EPRT |2|2001:db8:1::2|50000|", "522 "),
        ("vsftpd", "EPRT |2|2001:db8:1::2|50000|", "500 "),
    ],
)
def test_extended_commands_naming_ipv6(
    gateway: Gateway, server: str, command: str, refused: str
) -> None:
    """An IPv4 server refuses network protocol 2; through ftpalg it is translated."""
    (reply,) = raw(gateway, server, [command])
    if gateway.alg is None:
        assert reply.startswith(refused), reply
    else:
        assert reply.startswith("229 " if command.startswith("EPSV") else "200 "), reply


FAILING_WITHOUT_ALG = [
    ("wget-passive", "pyftpdlib"),  # EPSV 2 -> 522, LPSV -> 500
    ("wget-passive", "vsftpd"),
    ("wget-active", "vsftpd"),  # EPRT |2| -> 500, LPRT -> 500
    ("ftplib-active", "pyftpdlib"),  # EPRT |2| -> 522
    ("ftplib-active", "vsftpd"),
    ("curl-eprt", "pyftpdlib"),
    ("curl-epsv", "rfc959"),  # EPSV -> 500; curl gives up
    ("ftplib-passive", "rfc959"),
    ("lftp-passive", "rfc959"),
    ("wget-passive", "rfc959"),
    ("lftp-active", "rfc959"),
]


@pytest.mark.parametrize(("mode", "server"), FAILING_WITHOUT_ALG)
def test_clients_that_fail_without_an_alg(
    gateway: Gateway, mode: str, server: str, tmp_path: Path
) -> None:
    target = nat64_target(gateway.servers[server], NSP)
    local = tmp_path / f"d{next(_names)}.bin"
    mark = gateway.alg.mark() if gateway.alg is not None else 0
    result = run_transfer(gateway.lab, mode, target, "data.bin", local, False, 15)
    assert result is not None
    if gateway.alg is None:
        assert not result.ok, f"{mode} against {server} worked through a NAT64 without ALG"
    else:
        assert result.ok, result.detail
        assert result.sha256 == gateway.files[server]
        (opened,) = gateway.alg.named("session_opened", since=mark)  # ftpalg carried it
        assert opened["nat64"] is True and opened["server"] == f"{target_v4(gateway, server)}:21"


def target_v4(gateway: Gateway, server: str) -> str:
    return str(gateway.servers[server].address)


def test_a_48_bit_prefix(tmp_path: Path) -> None:
    """RFC 6052's /48 layout end to end (the IPv4 address split around the u octet): the
    server without EPSV, passive and active, through ftpalg alone."""
    need_tools("curl")
    prefix = IPv6Network("2001:db8:122::/48")
    lab = start_lab()
    try:
        make_ipv6_only(lab, (prefix,))
        srv = start_rfc959(lab, lab.addresses.servers_v4[3])
        digest = make_file(srv.root, "data.bin", SIZE)
        apply_closed_gateway(lab)
        alg = start_ftpalg(lab, ["--listen", "[::]:21", "--nat64-prefix", str(prefix)])
        target = nat64_target(srv, prefix)
        assert str(target.address) == "2001:db8:122:cb00:71:d00::"  # 203.0.113.13
        for mode in ("curl-epsv", "ftplib-active"):
            local = tmp_path / f"{mode}.bin"
            result = run_transfer(lab, mode, target, "data.bin", local, False, 30)
            assert result is not None and result.ok, result and result.detail
            assert result.sha256 == digest
        opened = alg.named("session_opened")
        assert [o["server"] for o in opened] == [f"{srv.address}:21"] * 2
        assert {o["server_face"] for o in opened} == {f"[{target.address}]:21"}
    finally:
        lab.close()
