"""docker/: the image and the three-node compose lab, checked without a Docker engine.

compose.yaml is loaded with PyYAML and checked for what makes the lab work: the services and
networks, the gateway's capabilities and sysctls, its command line (parsed by ftpalg's own
``build_config``, so a flag that does not exist or a wrong upstream fails here), and the
addresses that must agree across files (upstream = vsftpd's address = its pasv_address).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftpalg.ops.config import build_config

DOCKER = Path(__file__).resolve().parents[1] / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _ip(service: dict[str, Any], network: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(service["networks"][network]["ipv4_address"])


def _subnet(compose: dict[str, Any], network: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(compose["networks"][network]["ipam"]["config"][0]["subnet"])


def test_services_and_networks(compose: dict[str, Any]) -> None:
    services, networks = compose["services"], compose["networks"]
    assert set(services) == {"gateway", "vsftpd", "client"}
    assert set(networks) == {"clients", "private"}
    assert networks["private"].get("internal") is True  # the server has no other way out
    assert set(services["gateway"]["networks"]) == {"clients", "private"}
    assert set(services["vsftpd"]["networks"]) == {"private"}
    assert set(services["client"]["networks"]) == {"clients"}  # reaches vsftpd only via ftpalg
    for name, service in services.items():
        for net in service["networks"]:
            assert _ip(service, net) in _subnet(compose, net), (name, net)
    addresses = [_ip(s, n) for s in services.values() for n in s["networks"]]
    assert len(addresses) == len(set(addresses))


def test_gateway_privileges(compose: dict[str, Any]) -> None:
    gw = compose["services"]["gateway"]
    assert "NET_ADMIN" in gw["cap_add"]
    assert str(gw["sysctls"]["net.ipv4.ip_forward"]) == "1"
    assert "privileged" not in gw and "network_mode" not in gw


def test_gateway_command_is_a_valid_reverse_proxy_for_vsftpd(compose: dict[str, Any]) -> None:
    services = compose["services"]
    command = services["gateway"]["command"]
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    config, _ = build_config(command)  # the image's entrypoint is `ftpalg`
    assert not config.transparent
    assert [str(ep) for ep in config.listen] == ["0.0.0.0:21"]
    assert config.upstream is not None
    assert config.upstream.host == str(_ip(services["vsftpd"], "private"))
    assert config.upstream.port == 21


def test_vsftpd_advertises_its_private_address(compose: dict[str, Any]) -> None:
    vsftpd = compose["services"]["vsftpd"]
    conf = dict(
        line.split("=", 1)
        for line in (DOCKER / vsftpd["build"] / "vsftpd.conf").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert conf["pasv_address"] == str(_ip(vsftpd, "private"))
    assert conf["background"] == "NO" and conf["listen"] == "YES"
    assert conf["seccomp_sandbox"] == "NO"  # vsftpd's sandbox fails in many container setups
    assert conf["port_enable"] == "YES" and conf["pasv_enable"] == "YES"


def test_builds_point_at_files_that_exist(compose: dict[str, Any]) -> None:
    gw_build = compose["services"]["gateway"]["build"]
    context = (DOCKER / gw_build["context"]).resolve()
    assert (context / gw_build["dockerfile"]).is_file()
    assert (context / "pyproject.toml").is_file()
    for name in ("vsftpd", "client"):
        assert (DOCKER / compose["services"][name]["build"] / "Dockerfile").is_file()
    client = (DOCKER / "client" / "Dockerfile").read_text()
    assert re.search(r"apt-get install .*\bcurl\b.*\blftp\b", client)


def test_dockerfile_installs_the_package_and_nftables() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    logical = text.replace("\\\n", " ")
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    install = re.search(r"apt-get install [^&\n]*", logical)
    assert install and {"nftables", "iproute2"} <= set(install.group(0).split())
    assert re.search(r"^COPY ftpalg ", text, re.M) and re.search(
        r"^COPY pyproject\.toml ", text, re.M
    )
    assert re.search(r"pip install [^&\n]*\s\.(\s|$)", logical)
    assert re.search(r'^ENTRYPOINT \["ftpalg"\]', text, re.M)
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!ftpalg/" in ignore and "!pyproject.toml" in ignore
