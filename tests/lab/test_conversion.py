"""Data-mode conversion (issue 14, docs/conversion.md) with real clients and servers, through
ftpalg in transparent mode on a gateway whose forward policy drops everything:

- `passive-only`: vsftpd behind its own firewall (nftables output chain in the server
  namespace rejects every connection the server would originate): active mode cannot work;
- `active-only`: vsftpd with pasv_enable=NO: passive mode cannot work;
- `rfc959`: pyftpdlib without EPSV/EPRT (500): ftpalg falls back to PASV/PORT.

Every client mode (curl EPSV/PASV/EPRT/PORT, lftp passive on/off, ftplib PASV/PORT), download
and upload, sha256 checked, with data_policy = passive, active and client: with `client` the
combinations that cannot work fail (as without ftpalg), with the policy that fits the server
they all succeed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import CLIENT_MODES, FtpTarget, run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab
from ftpalg.lab.rfc959_server import start_rfc959
from ftpalg.lab.servers import FtpServer, make_file, sha256_file, start_vsftpd
from tests.lab.conftest import start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

SIZES = {"0B": 0, "1MiB": 1 << 20}
_names = itertools.count()
V4_ONLY = {"curl-pasv", "curl-port", "ftplib-pasv", "ftplib-port"}
PASSIVE_CLIENTS = {m for m, (_, passive, _) in CLIENT_MODES.items() if passive}


@dataclass
class Setup:
    lab: Lab
    alg: AlgProcess
    policy: str
    servers: dict[str, FtpServer]
    files: dict[tuple[str, str], str]  # (server, size) -> sha256


@pytest.fixture(scope="module", params=["passive", "active", "client"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    policy = request.param
    lab = start_lab()
    try:
        apply_closed_gateway(lab)
        a = lab.addresses
        passive_only = start_vsftpd(lab, a.servers_v4[0])
        active_only = start_vsftpd(lab, a.servers_v4[1], passive=False)
        rfc959 = start_rfc959(lab, a.servers_v4[2])  # before the firewall (its ready check)
        passive_v6 = start_vsftpd(lab, a.servers_v6[0])
        active_v6 = start_vsftpd(lab, a.servers_v6[1], passive=False)
        # the passive-only server's own firewall: nothing it originates gets out
        lab.nft(
            "srv",
            "table inet conv_fw {\n chain out {\n  type filter hook output priority 0;\n"
            f"  ip saddr {passive_only.address} ct state new reject with tcp reset\n"
            f"  ip6 saddr {passive_v6.address} ct state new reject with tcp reset\n }}\n}}\n",
        )
        servers = {"passive-only": passive_only, "active-only": active_only, "rfc959": rfc959}
        servers |= {"passive-only-v6": passive_v6, "active-only-v6": active_v6}
        files = {
            (name, size): make_file(srv.root, f"{size}.bin", n)
            for name, srv in servers.items()
            for size, n in SIZES.items()
        }
        args = ["--listen", "0.0.0.0:21", "--listen", "[::]:21", "--data-plane", "relay"]
        args += ["--data-policy", policy]
        alg = start_ftpalg(lab, args)
        yield Setup(lab, alg, policy, servers, files)
    finally:
        lab.close()


def expected(policy: str, server: str, mode: str) -> bool:
    """Converting: every client mode works against the server that fits the policy and none
    against the other; `client`: only the client modes the server itself supports. The
    RFC 959 server (no EPSV/EPRT) works for all: ftpalg falls back to PASV/PORT, and so do
    the clients themselves under `client`."""
    if server == "rfc959":
        return True
    if policy == "client":
        if mode == "lftp-passive":  # lftp switches to active itself when PASV is refused
            return True
        passive = mode in PASSIVE_CLIENTS
        return passive if server == "passive-only" else not passive
    return server == ("passive-only" if policy == "passive" else "active-only")


SERVERS = ("passive-only", "active-only", "rfc959", "passive-only-v6", "active-only-v6")
# every server with every client mode, except PASV/PORT clients with IPv6 servers (those
# commands carry IPv4 addresses only)
PAIRS = [
    (server, mode)
    for server in SERVERS
    for mode in sorted(CLIENT_MODES)
    if not (server.endswith("-v6") and mode in V4_ONLY)
]
# what needs a converting policy (under `client` nothing is converted)
CONVERTING = pytest.mark.parametrize("setup", ["passive", "active"], indirect=True)


@pytest.mark.parametrize(("server", "mode"), PAIRS)
@pytest.mark.parametrize("upload", [False, True], ids=["down", "up"])
def test_matrix(setup: Setup, server: str, mode: str, upload: bool, tmp_path: Path) -> None:
    srv = setup.servers[server]
    ok = expected(setup.policy, server.removesuffix("-v6"), mode)
    sizes = list(SIZES) if ok else ["1MiB"]  # a failure once is enough
    for size in sizes:
        if upload:
            local = tmp_path / f"up{next(_names)}.bin"
            digest = make_file(tmp_path, local.name, SIZES[size])
            remote = srv.upload_path(local.name)
            result = run_transfer(setup.lab, mode, srv.target, remote, local, True, timeout=15)
            assert result.ok is ok, (size, result.detail)
            if ok:
                assert sha256_file(srv.uploaded(local.name)) == digest
        else:
            local = tmp_path / f"down{next(_names)}.bin"
            result = run_transfer(setup.lab, mode, srv.target, f"{size}.bin", local, timeout=15)
            assert result.ok is ok, (size, result.detail)
            if ok:
                assert result.sha256 == setup.files[(server, size)]
                assert result.nbytes == SIZES[size]


@CONVERTING
def test_one_converted_event_per_transfer_and_64mib(setup: Setup, tmp_path: Path) -> None:
    server = "passive-only" if setup.policy == "passive" else "active-only"
    srv = setup.servers[server]
    make_file(srv.root, "64MiB.bin", 64 << 20)
    mode = "curl-port" if setup.policy == "passive" else "curl-epsv"
    before = len(setup.alg.named("converted"))
    result = run_transfer(setup.lab, mode, srv.target, "64MiB.bin", tmp_path / "big", timeout=60)
    assert result.ok, result.detail
    assert result.sha256 == sha256_file(srv.root / "64MiB.bin")
    events = setup.alg.named("converted")[before:]
    want = ("PORT", "EPSV") if setup.policy == "passive" else ("EPSV", "EPRT")
    assert [(e["client_kind"], e["upstream_kind"]) for e in events] == [want]


@CONVERTING
def test_the_rfc959_server_gets_pasv_or_port_after_refusing_the_extended_command(
    setup: Setup, tmp_path: Path
) -> None:
    srv = setup.servers["rfc959"]
    mode = "curl-port" if setup.policy == "passive" else "curl-epsv"
    before = len(setup.alg.named("converted"))
    for _ in range(2):  # two sessions: each falls back by itself
        result = run_transfer(setup.lab, mode, srv.target, "1MiB.bin", tmp_path / "f", timeout=15)
        assert result.ok, result.detail
    kinds = [e["upstream_kind"] for e in setup.alg.named("converted")[before:]]
    assert kinds == ["PASV" if setup.policy == "passive" else "PORT"] * 2


@dataclass
class Reverse:
    lab: Lab
    srv: FtpServer
    target: FtpTarget
    digest: str


@pytest.fixture(scope="module", params=["passive", "active"])
def reverse(request: pytest.FixtureRequest) -> Iterator[Reverse]:
    """Reverse mode: ftpalg is the server's public face (clients outside, the server inside);
    the server supports only the mode the policy converts to."""
    policy = request.param
    lab = start_lab()
    lab.server_role, lab.client_role = "cli", "srv"
    try:
        apply_closed_gateway(lab)
        a = lab.addresses
        srv = start_vsftpd(lab, a.client_v4, passive=policy == "passive")
        digest = make_file(srv.root, "f.bin", 3 << 20)
        if policy == "passive":  # and it cannot connect out
            lab.nft(
                "cli",
                "table inet conv_fw {\n chain out {\n  type filter hook output priority 0;\n"
                f"  ip saddr {a.client_v4} ct state new reject with tcp reset\n }}\n}}\n",
            )
        args = ["--listen", f"{a.gw_outside_v4}:21", "--upstream", f"{a.client_v4}:21"]
        start_ftpalg(lab, [*args, "--data-policy", policy])
        yield Reverse(lab, srv, FtpTarget(a.gw_outside_v4, 21), digest)
    finally:
        lab.close()


@pytest.mark.parametrize("mode", sorted(CLIENT_MODES))
def test_reverse_mode_converts_for_every_client(
    reverse: Reverse, mode: str, tmp_path: Path
) -> None:
    result = run_transfer(reverse.lab, mode, reverse.target, "f.bin", tmp_path / "f", timeout=20)
    assert result.ok, result.detail
    assert result.sha256 == reverse.digest


REST_AND_ABOR = r"""
import ftplib, hashlib, sys
host, name, digest = sys.argv[1], sys.argv[2], sys.argv[3]
ftp = ftplib.FTP(host, timeout=15)
ftp.login()
ftp.set_pasv(sys.argv[4] == "pasv")
ftp.voidcmd("TYPE I")
whole = bytearray()
ftp.retrbinary("RETR " + name, whole.extend)
assert hashlib.sha256(whole).hexdigest() == digest
tail = bytearray()
ftp.retrbinary("RETR " + name, tail.extend, rest=1000)  # REST 1000 first
assert bytes(tail) == bytes(whole[1000:]), len(tail)
conn = ftp.transfercmd("RETR " + name)  # ABOR in the middle of a transfer
conn.recv(1000)
conn.close()
replies = [ftp.abort()]  # the transfer's 426 (or 226 if it had finished) ...
ftp.putcmd("NOOP")
while not replies[-1].startswith("200"):  # ... the ABOR's own 225/226, then NOOP's 200
    replies.append(ftp.getmultiline())
codes = [r[:3] for r in replies]
assert codes[0] in ("426", "226") and codes[1] in ("225", "226") and len(codes) == 3, replies
again = bytearray()
ftp.retrbinary("RETR " + name, again.extend)
assert hashlib.sha256(again).hexdigest() == digest
ftp.quit()
print("ok")
"""


@CONVERTING
def test_rest_and_abor_keep_working(setup: Setup) -> None:
    server = "passive-only" if setup.policy == "passive" else "active-only"
    srv = setup.servers[server]
    mode = "port" if setup.policy == "passive" else "pasv"  # the client's, converted
    argv = ["python3", "-c", REST_AND_ABOR, str(srv.address), "1MiB.bin"]
    argv += [setup.files[(server, "1MiB")], mode]
    result = setup.lab.run("cli", argv, timeout=60)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
