"""Reverse mode in front of legacy servers on a private network, and strict vs --loose with a
client whose PORT names another address (issue 3); real servers and clients, sha256 checked."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import CLIENT_MODES, FtpTarget, run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import FtpServer, make_file, sha256_file, start_server
from tests.lab.conftest import baseline, start_lab
from tests.lab.counts import counts_match

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

REVERSE_KINDS = {"pyftpdlib": 21, "vsftpd": 2121}


@dataclass
class Site:
    lab: Lab
    server: FtpServer
    alg: AlgProcess
    target: FtpTarget
    digest: str


@pytest.fixture(scope="module", params=["relay", "kernel"])
def reverse(request: pytest.FixtureRequest) -> Iterator[dict[str, Site]]:
    """Per legacy server a lab: the server on the private inside network (10.N.1.2), clients
    outside, ftpalg in reverse mode on the gateway's own outside address — on the relay, or
    on the kernel data plane (one instance per network namespace may own the pinholes:
    `kernel/claim.py`; the gateway's forward chain has the rule for ftpalg's tag)."""
    plane = request.param
    sites: dict[str, Site] = {}
    try:
        for kind, port in REVERSE_KINDS.items():
            lab = start_lab()
            lab.server_role, lab.client_role = "cli", "srv"
            sites[kind] = Site(lab, *start_reverse(lab, kind, port, plane))
        yield sites
    finally:
        for site in sites.values():
            site.lab.close()


def start_reverse(
    lab: Lab, kind: str, port: int, plane: str
) -> tuple[FtpServer, AlgProcess, FtpTarget, str]:
    try:
        apply_closed_gateway(lab, pinholes=plane == "kernel")
        a = lab.addresses
        srv = start_server(lab, kind, a.client_v4, port)
        digest = make_file(srv.root, "f.bin", 3 << 20)
        args = ["--listen", f"{a.gw_outside_v4}:{port}", "--upstream", f"{a.client_v4}:{port}"]
        alg = start_ftpalg(lab, [*args, "--data-plane", plane])
        assert alg.named("started")[0]["data_plane"] == plane
    except BaseException:
        lab.close()
        raise
    return srv, alg, FtpTarget(a.gw_outside_v4, port, srv.user, srv.password), digest


@pytest.mark.parametrize("mode", list(CLIENT_MODES))
@pytest.mark.parametrize("kind", list(REVERSE_KINDS))
def test_reverse_mode_all_clients(
    reverse: dict[str, Site], kind: str, mode: str, tmp_path: Path
) -> None:
    site = reverse[kind]
    srv, digest = site.server, site.digest
    since = baseline(site.alg, (srv,))
    down = run_transfer(site.lab, mode, site.target, "f.bin", tmp_path / "down.bin")
    assert down.ok, down.detail
    assert down.sha256 == digest
    name = f"up-{mode}.bin"
    up = run_transfer(
        site.lab, mode, site.target, srv.upload_path(name), tmp_path / "down.bin", upload=True
    )
    assert up.ok, up.detail
    assert sha256_file(srv.uploaded(name)) == digest
    # every transfer counted by the plane that carried it, to the byte (or, on the kernel
    # plane when a SYN/FIN record was missed, an estimate that says so: close to it)
    size = 3 << 20

    def counted() -> bool:
        ended = since.named("data_finished")
        return all(counts_match(ended, want) for want in ((size, 0), (0, size)))

    assert wait_until(counted, 10), since.named("data_finished")
    planes = {e["data_plane"] for e in since.named("data_finished")}
    assert planes == {site.alg.named("started")[0]["data_plane"]}, planes


@pytest.mark.parametrize("kind", list(REVERSE_KINDS))
def test_reverse_227_names_the_private_address_and_is_rewritten(
    reverse: dict[str, Site], kind: str, tmp_path: Path
) -> None:
    site = reverse[kind]
    a = site.lab.addresses
    since = baseline(site.alg, (site.server,))  # this test's own PASV download only
    down = run_transfer(site.lab, "curl-pasv", site.target, "f.bin", tmp_path / "down.bin")
    assert down.ok and down.sha256 == site.digest, down.detail
    (pasv,) = since.named("rewrite")
    private = ",".join(str(a.client_v4).split("."))
    public = ",".join(str(a.gw_outside_v4).split("."))
    assert pasv["kind"] == "227"
    assert f"({private}," in pasv["before"] and f"({public}," in pasv["after"], pasv
    # the legacy server sees the gateway's inside address, never the outside client
    assert since.seen_clients(site.server) == {str(a.gw_inside_v4)}


THIRD_PARTY_SCRIPT = """
import ftplib, socket, sys
host, third = sys.argv[1], sys.argv[2]
ftp = ftplib.FTP()
ftp.connect(host, 21, timeout=10)
ftp.login("lab", "lab")
listener = socket.create_server((third, 0))
listener.settimeout(10)
port = listener.getsockname()[1]
ftp.sendcmd("TYPE I")
numbers = ",".join(third.split(".") + [str(port >> 8), str(port & 255)])
try:
    print("PORT", ftp.sendcmd("PORT " + numbers))
except ftplib.error_perm as exc:
    print("PORT", exc)
    try:
        print("RETR", ftp.sendcmd("RETR f.bin"))
    except ftplib.Error as exc2:
        print("RETR", exc2)
    sys.exit(0)
ftp.putcmd("RETR f.bin")
print("RETR", ftp.getresp())
conn, peer = listener.accept()
data = b""
while chunk := conn.recv(65536):
    data += chunk
import hashlib
print("DATA", peer[0], hashlib.sha256(data).hexdigest())
print("END", ftp.voidresp())
"""


def test_strict_refuses_and_loose_trusts_a_third_party_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FTPALG_LAB_LOG_COMMANDS", "1")
    lab = start_lab()
    try:
        apply_closed_gateway(lab)
        a = lab.addresses
        third = f"10.{a.subnet}.1.3"
        lab.run("cli", ["ip", "addr", "add", f"{third}/24", "dev", lab.ifnames.client], check=True)
        srv = start_server(lab, "pyftpdlib", a.server_v4)
        digest = make_file(srv.root, "f.bin", 1 << 20)
        argv = ["python3", "-c", THIRD_PARTY_SCRIPT, str(a.server_v4), third]

        strict = start_ftpalg(lab, ["--listen", "0.0.0.0:21"])
        out = lab.run("cli", argv, timeout=30)
        assert out.returncode == 0, out.stderr
        assert f"500 Illegal PORT command: {third} is not your address." in out.stdout
        assert "<- PORT" not in srv.log_text() and "<- RETR" in srv.log_text()  # never saw it
        assert strict.named("command_refused")
        strict.stop()

        loose = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--loose"])
        out = lab.run("cli", argv, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "PORT 200" in out.stdout
        assert f"DATA {a.server_v4} {digest}" in out.stdout  # dialed to the third address
        (accepted,) = loose.named("data_accepted")
        assert accepted["target"].startswith(f"{third}:")
    finally:
        lab.close()
