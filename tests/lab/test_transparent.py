"""Transparent mode (issue 3): ftpalg on a gateway whose forward policy drops everything, so
nothing can bypass it; real clients × real servers, downloads and uploads, sha256 compared.
One ftpalg serves the module; a test that reads logs reads only the lines logged since it
began (its own transfers), so every test passes alone and in any order."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import CLIENT_MODES, FtpTarget, run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import FtpServer, make_file, sha256_file
from tests.lab.conftest import SERVER_KINDS, Baseline, ServerPool, baseline, start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

SIZES = {"0B": 0, "1B": 1, "1MiB": 1 << 20, "64MiB": 64 << 20}
_names = itertools.count()


@dataclass
class Gateway:
    lab: Lab
    alg: AlgProcess
    servers: ServerPool
    files: dict[tuple[str, int, str], str]  # (server kind, version, size) -> sha256

    def server(self, kind: str, version: int = 4) -> FtpServer:
        srv = self.servers.get(kind, version)
        for size_name, size in SIZES.items():
            key = (kind, version, size_name)
            if key not in self.files:
                self.files[key] = make_file(srv.root, f"{size_name}.bin", size)
        return srv


@pytest.fixture(scope="module", params=["relay", "kernel"])
def gw(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """The whole matrix runs once per data plane: ftpalg relays the data connections, or the
    kernel carries them through single-use pinholes (docs/data-plane.md), behind a forward
    chain with policy drop that has only the one documented rule for ftpalg's tag."""
    plane = request.param
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=plane == "kernel")
        args = ["--listen", "0.0.0.0:21", "--listen", "[::]:21", "--data-plane", plane]
        alg = start_ftpalg(lab, args)
        assert alg.named("started")[0]["data_plane"] == plane
        yield Gateway(lab, alg, ServerPool(lab), {})
    finally:
        lab.close()


@pytest.fixture
def since(gw: Gateway) -> Baseline:
    """This test's starting point in ftpalg's log (earlier tests' sessions all closed)."""
    return baseline(gw.alg)


def transfer(gw: Gateway, srv: FtpServer, mode: str, size: str, upload: bool, tmp: Path) -> None:
    if upload:
        local = tmp / f"up{next(_names)}.bin"
        digest = make_file(tmp, local.name, SIZES[size])
        name = local.name
        result = run_transfer(gw.lab, mode, srv.target, srv.upload_path(name), local, True)
        assert result.ok, result.detail
        assert sha256_file(srv.uploaded(name)) == digest
    else:
        local = tmp / "down.bin"
        result = run_transfer(gw.lab, mode, srv.target, f"{size}.bin", local)
        assert result.ok, result.detail
        assert result.sha256 == gw.files[(srv.kind, srv.address.version, size)]
        assert result.nbytes == SIZES[size]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("direction", ["download", "upload"])
@pytest.mark.parametrize("mode", list(CLIENT_MODES))
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_matrix_ipv4(
    gw: Gateway, kind: str, mode: str, direction: str, size: str, tmp_path: Path
) -> None:
    transfer(gw, gw.server(kind), mode, size, direction == "upload", tmp_path)


@pytest.mark.parametrize("direction", ["download", "upload"])
@pytest.mark.parametrize("mode", ["curl-epsv", "curl-eprt", "lftp-passive", "lftp-active"])
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_ipv6_epsv_and_eprt(
    gw: Gateway, kind: str, mode: str, direction: str, tmp_path: Path
) -> None:
    transfer(gw, gw.server(kind, 6), mode, "1MiB", direction == "upload", tmp_path)


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_server_sees_the_gateways_outside_address(gw: Gateway, kind: str, tmp_path: Path) -> None:
    srv = gw.server(kind)
    mark = srv.log_mark()  # after the server's start-up (and readiness probe)
    assert run_transfer(gw.lab, "curl-port", srv.target, "1B.bin", tmp_path / "x").ok
    assert srv.seen_clients(since=mark) == {str(gw.lab.addresses.gw_outside_v4)}


ACTIVE_PEER_SCRIPT = """
import ftplib, socket, sys
host, user, password, me = sys.argv[1:5]
ftp = ftplib.FTP()
ftp.connect(host, 21, timeout=10)
ftp.login(user, password) if user != "-" else ftp.login()
listener = socket.create_server((me, 0))
port = listener.getsockname()[1]
ftp.sendcmd("TYPE I")
ftp.sendcmd("PORT " + ",".join(me.split(".") + [str(port >> 8), str(port & 255)]))
ftp.putcmd("RETR 1B.bin")
reply = ftp.getresp()
assert reply[:1] == "1", reply
listener.settimeout(10)
conn, peer = listener.accept()
data = conn.recv(10)
conn.close()
print(peer[0], peer[1], len(data))
ftp.voidresp()
ftp.quit()
"""


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_client_sees_active_data_from_the_server(gw: Gateway, kind: str) -> None:
    srv = gw.server(kind)
    a = gw.lab.addresses
    user, password = srv.user or "-", srv.password or "-"
    run = gw.lab.run(
        "cli",
        ["python3", "-c", ACTIVE_PEER_SCRIPT, str(srv.address), user, password, str(a.client_v4)],
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    host, port, nbytes = run.stdout.split()
    assert host == str(srv.address) and nbytes == "1"
    if kind == "vsftpd":  # connect_from_port_20: the port is kept too, as the kernel NAT keeps it
        assert port == "20"


def test_rewrites_and_transfers_are_logged(gw: Gateway, since: Baseline, tmp_path: Path) -> None:
    srv = gw.server("pyftpdlib")
    modes = {"curl-port": "PORT", "curl-eprt": "EPRT", "curl-pasv": "227", "curl-epsv": "229"}
    for mode in modes:
        result = run_transfer(gw.lab, mode, srv.target, "1MiB.bin", tmp_path / f"{mode}.bin")
        assert result.ok and result.nbytes == SIZES["1MiB"], result.detail
    assert wait_until(lambda: len(since.named("data_finished")) == len(modes), 5)
    announced = since.named("rewrite") + since.named("announce_unchanged")
    assert sorted(e["kind"] for e in announced) == sorted(modes.values())
    # transparent mode: PORT/EPRT name the client (rewritten to the gateway's address); the
    # 227 names the server's own address with its port, the 229 only the port: unchanged
    assert sorted(e["kind"] for e in since.named("rewrite")) == ["EPRT", "PORT"]
    for e in since.named("data_finished"):
        assert (e["bytes_to_client"], e["bytes_to_server"], e["result"]) == (SIZES["1MiB"], 0, "ok")
        assert e["seconds"] >= 0
    opened = since.named("session_opened")
    assert len(opened) == len(modes) and all(e["mode"] == "transparent" for e in opened)
    assert since.named("command") == since.named("reply") == []  # the trace: debug only


def test_sigterm_removes_kernel_state() -> None:
    lab = start_lab()
    try:
        apply_closed_gateway(lab)
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21"])
        assert lab.run("gw", ["nft", "list", "table", "inet", "ftpalg"]).returncode == 0
        assert "fwmark 0x1" in lab.run("gw", ["ip", "rule"]).stdout
        assert alg.stop() == 0
        assert lab.run("gw", ["nft", "list", "table", "inet", "ftpalg"]).returncode != 0
        assert "fwmark" not in lab.run("gw", ["ip", "rule"]).stdout
        target = FtpTarget(lab.addresses.server_v4)
        assert not lab.can_connect("cli", target.address, 21, timeout=1.0)
    finally:
        lab.close()
