"""Reverse mode behind a DNAT (issue 16, item 4): `--announce-address` is the address written
into 227 replies, and every data listener is inside `--data-ports`, so an operator who
forwards the control port and the data-port range to the gateway gets working passive and
active FTP. The DNAT here is an nft rule on the gateway itself: the client reaches ftpalg
only through the announced address."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from ftpalg.lab.alg import start_ftpalg
from ftpalg.lab.clients import FtpTarget, run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import wait_until
from ftpalg.lab.servers import make_file, sha256_file, start_server
from tests.lab.conftest import baseline, start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

PUBLIC = "192.0.2.7"  # the address clients know; a DNAT on the gateway maps it to ftpalg
LOW, HIGH = 45000, 45009


def dnat_ruleset(public: str, private: str) -> str:
    return (
        "table ip front {\n"
        "\tchain pre {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"\t\tip daddr {public} tcp dport {{ 21, {LOW}-{HIGH} }} dnat to {private}\n"
        "\t}\n"
        "}\n"
    )


@pytest.mark.parametrize("mode", ["curl-pasv", "curl-epsv", "curl-port", "ftplib-pasv"])
def test_announce_address_behind_a_dnat(mode: str, tmp_path: Path) -> None:
    lab = start_lab()
    try:
        apply_closed_gateway(lab)
        a = lab.addresses
        lab.nft("gw", dnat_ruleset(PUBLIC, str(a.gw_outside_v4)))
        server = start_server(lab, "vsftpd", a.servers_v4[1])
        digest = make_file(server.root, "f.bin", 1 << 20, seed=5)
        args = ["--listen", f"{a.gw_outside_v4}:21", "--upstream", f"{server.address}:21"]
        args += ["--announce-address", PUBLIC, "--data-ports", f"{LOW}-{HIGH}"]
        alg = start_ftpalg(lab, args)
        (warning,) = alg.named("data_plane_relay")  # auto: the pinholes cannot see the DNAT
        assert "announce_address" in str(warning["reason"])
        since = baseline(alg, (server,))
        target = FtpTarget(ip_address(PUBLIC), 21, server.user, server.password)
        down = run_transfer(lab, mode, target, "f.bin", tmp_path / "down.bin")
        assert down.ok and down.sha256 == digest, down.detail
        remote = server.upload_path("up.bin")
        up = run_transfer(lab, mode, target, remote, tmp_path / "down.bin", upload=True)
        assert up.ok, up.detail
        assert sha256_file(server.uploaded("up.bin")) == digest
        assert wait_until(lambda: len(since.named("data_finished")) >= 2, 10)
        rewrites = since.named("rewrite")
        assert rewrites, alg.tail()
        for r in rewrites:  # every listener inside the range, every 227 names PUBLIC
            port = int(str(r["listen"]).rsplit(":", 1)[1])
            assert LOW <= port <= HIGH, r
            if r["kind"] == "227":
                assert "(192,0,2,7," in str(r["after"]), r
            if r["kind"] == "PORT":  # the server sees the gateway's own address, never PUBLIC
                assert f"PORT {','.join(str(a.gw_outside_v4).split('.'))}," in str(r["after"])
    finally:
        lab.close()
