"""The lab itself, proven through the kernel's own FTP NAT helper.

Real namespaces, real servers (pyftpdlib, vsftpd, pure-ftpd), real clients (curl, lftp, ftplib);
every transfer is checked by sha256. The gateway's forward chain drops everything the helper
did not expect, so these tests also show that data connections only pass because of the helper.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpalg.lab import clients, gateway
from ftpalg.lab.netns import Lab, LabError, Role
from ftpalg.lab.servers import FtpServer, make_file, sha256_file, start_pyftpdlib
from tests.requirements import need_tools

from .conftest import SERVER_KINDS, ServerPool, start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

MiB = 1 << 20
CURL_MODES: tuple[clients.CurlMode, ...] = ("epsv", "pasv", "eprt", "port")


@pytest.fixture(scope="module")
def kernel_lab() -> Iterator[tuple[Lab, ServerPool]]:
    need_tools("curl", "lftp", "conntrack")
    lab = start_lab()
    try:
        gateway.apply_kernel_nat(lab)
        yield lab, ServerPool(lab)
    finally:
        lab.close()


def _file(server: FtpServer, size: int = MiB) -> tuple[str, str]:
    name = f"file-{size}.bin"
    if not (server.root / name).exists():
        make_file(server.root, name, size)
    return name, sha256_file(server.root / name)


def _assert_download(result: clients.TransferResult, expected: str, size: int) -> None:
    assert result.ok, result.detail
    assert result.sha256 == expected
    assert result.nbytes == size


def _assert_upload(result: clients.TransferResult, server: FtpServer, name: str) -> None:
    assert result.ok, result.detail
    arrived = server.uploaded(name)
    assert arrived.exists(), f"{arrived} missing; server log:\n{server.log_text()[-1500:]}"
    assert sha256_file(arrived) == result.sha256
    assert arrived.stat().st_size == result.nbytes


@pytest.mark.parametrize("mode", CURL_MODES)
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_curl_download_ipv4(
    kernel_lab: tuple[Lab, ServerPool], kind: str, mode: clients.CurlMode, tmp_path: Path
) -> None:
    lab, pool = kernel_lab
    server = pool.get(kind)
    name, digest = _file(server)
    result = clients.curl_transfer(lab, server.target, name, tmp_path / "out", mode=mode)
    _assert_download(result, digest, MiB)


@pytest.mark.parametrize("mode", ["epsv", "eprt"])
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_curl_download_ipv6(
    kernel_lab: tuple[Lab, ServerPool], kind: str, mode: clients.CurlMode, tmp_path: Path
) -> None:
    lab, pool = kernel_lab
    server = pool.get(kind, version=6)
    name, digest = _file(server)
    result = clients.curl_transfer(lab, server.target, name, tmp_path / "out", mode=mode)
    _assert_download(result, digest, MiB)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_curl_upload(
    kernel_lab: tuple[Lab, ServerPool], kind: str, version: int, tmp_path: Path
) -> None:
    lab, pool = kernel_lab
    server = pool.get(kind, version)
    make_file(tmp_path, "up.bin", 3 * MiB + 17)
    name = f"curl-up-{version}.bin"
    result = clients.curl_transfer(
        lab, server.target, server.upload_path(name), tmp_path / "up.bin", upload=True
    )
    _assert_upload(result, server, name)


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_lftp(kernel_lab: tuple[Lab, ServerPool], kind: str, passive: bool, tmp_path: Path) -> None:
    lab, pool = kernel_lab
    server = pool.get(kind)
    make_file(tmp_path, "up.bin", MiB + 1)
    name = f"lftp-up-{passive}.bin"
    up = clients.lftp_transfer(
        lab, server.target, server.upload_path(name), tmp_path / "up.bin", True, passive
    )
    _assert_upload(up, server, name)
    fname, digest = _file(server)
    down = clients.lftp_transfer(lab, server.target, fname, tmp_path / "out", passive=passive)
    _assert_download(down, digest, MiB)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("passive", [True, False], ids=["pasv", "port"])
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_ftplib(
    kernel_lab: tuple[Lab, ServerPool], kind: str, passive: bool, version: int, tmp_path: Path
) -> None:
    lab, pool = kernel_lab
    server = pool.get(kind, version)
    name, digest = _file(server)
    down = clients.ftplib_transfer(lab, server.target, name, tmp_path / "out", passive=passive)
    _assert_download(down, digest, MiB)
    make_file(tmp_path, "up.bin", MiB + 3)
    up_name = f"ftplib-up-{passive}-{version}.bin"
    up = clients.ftplib_transfer(
        lab, server.target, server.upload_path(up_name), tmp_path / "up.bin", True, passive
    )
    _assert_upload(up, server, up_name)


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_server_sees_gateway_and_helper_is_attached(
    kernel_lab: tuple[Lab, ServerPool], kind: str, tmp_path: Path
) -> None:
    lab, pool = kernel_lab
    server = pool.get(kind)
    name, digest = _file(server)
    # only this test's connections: the server's log from here on, no earlier conntrack entry
    mark = server.log_mark()
    lab.run("gw", ["conntrack", "-D", "-p", "tcp", "--dport", "21", "-d", str(server.address)])
    result = clients.curl_transfer(lab, server.target, name, tmp_path / "out", mode="port")
    _assert_download(result, digest, MiB)
    seen = server.seen_clients(since=mark)
    a = lab.addresses
    assert seen == {str(a.gw_outside_v4)}, server.log_text(since=mark)[-2000:]
    # The kernel tracked the control connection with the ftp helper attached.
    ct = lab.run("gw", ["conntrack", "-L", "-p", "tcp", "--dport", "21", "-d", str(server.address)])
    helper_lines = [ln for ln in ct.stdout.splitlines() if "helper=ftp" in ln]
    assert helper_lines, ct.stdout + ct.stderr


def test_without_helper_data_connections_are_dropped(tmp_path: Path) -> None:
    """Same lab, same server: without the helper no data connection passes; with it, all do."""
    need_tools("curl")
    lab = start_lab()
    try:
        gateway.apply_kernel_nat(lab, helper=False)
        server = start_pyftpdlib(lab)
        name, digest = _file(server)
        # The control connection itself is forwarded ...
        assert lab.can_connect("cli", server.address, 21)
        # ... but neither direction of data connection is.
        negative: tuple[clients.CurlMode, ...] = ("port", "eprt", "epsv")
        for mode in negative:
            result = clients.curl_transfer(
                lab, server.target, name, tmp_path / mode, mode=mode, timeout=3
            )
            assert not result.ok, f"{mode} passed without the helper"
        # Positive control: only the helper is added.
        gateway.apply_kernel_nat(lab, helper=True)
        positive: tuple[clients.CurlMode, ...] = ("port", "epsv")
        for mode in positive:
            result = clients.curl_transfer(
                lab, server.target, name, tmp_path / f"ok-{mode}", mode=mode
            )
            _assert_download(result, digest, MiB)
    finally:
        lab.close()


def test_closed_gateway_forwards_nothing() -> None:
    lab = start_lab()
    try:
        servers = [start_pyftpdlib(lab), start_pyftpdlib(lab, lab.addresses.server_v6)]
        for server in servers:  # no rules yet: a plain router
            assert lab.can_connect("cli", server.address, 21)
        gateway.apply_closed_gateway(lab)
        for server in servers:
            assert not lab.can_connect("cli", server.address, 21, timeout=1.0)
            assert lab.can_connect("srv", server.address, 21)  # the server itself is up
    finally:
        lab.close()


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_close_removes_namespaces_processes_and_files() -> None:
    lab = start_lab()
    names = set(lab.namespaces.values())
    assert names <= _netns_names()
    server = start_pyftpdlib(lab)
    sleeper = lab.popen("cli", ["sleep", "300"])
    lab.close()
    assert not names & _netns_names()
    assert server.proc.poll() is not None
    assert sleeper.poll() is not None
    assert not server.workdir.exists()
    lab.close()  # idempotent
    with pytest.raises(LabError):
        lab.run("cli", ["true"])


def test_failed_build_leaves_nothing_behind() -> None:
    class BrokenLab(Lab):
        def _configure(self, role: Role, *args: object, **kw: object) -> None:
            raise LabError("injected failure")

    probe = start_lab()  # skips/fails here when the lab cannot be built at all
    probe.close()
    broken = BrokenLab()
    with pytest.raises(LabError, match="injected"):
        broken.start()
    assert not set(broken.namespaces.values()) & _netns_names()


def test_two_labs_do_not_clash() -> None:
    first = start_lab()
    try:
        second = start_lab()
        try:
            assert not set(first.namespaces.values()) & set(second.namespaces.values())
            for lab in (first, second):
                server = start_pyftpdlib(lab)
                assert lab.can_connect("cli", server.address, 21)
        finally:
            second.close()
    finally:
        first.close()
