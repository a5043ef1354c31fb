"""docker/: the images and the two compose labs, checked without a container engine.

The labs run for real in `make compose-lab` (scripts/compose_lab.sh, `ftpalg lab
--containers`, also in CI). These checks are what keeps the files consistent between those
runs: both compose files loaded with PyYAML (with `${VAR:-default}` expanded as a compose tool
would), the services and networks, each gateway's privileges, its command line parsed by
ftpalg's own `build_config` together with the image's config file, the addresses and ports
that must agree across files (upstream = vsftpd's address; announce address = published
address; published data ports = --data-ports), the Dockerfiles, the pinned versions, and
the constants of `ftpalg.lab.containers` against the compose files.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftpalg.lab import containers
from ftpalg.ops.config import build_config

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _expand(value: Any) -> Any:
    """`${VAR:-default}` -> default, recursively (the environment as in CI: unset)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2), value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _load(name: str) -> dict[str, Any]:
    text = (DOCKER / name).read_text()
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)
    return dict(_expand(raw))


@pytest.fixture(scope="module")
def reverse() -> dict[str, Any]:
    return _load("compose.yaml")


@pytest.fixture(scope="module")
def transparent() -> dict[str, Any]:
    return _load("compose.transparent.yaml")


def _ip(service: dict[str, Any], network: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(service["networks"][network]["ipv4_address"])


def _subnet(compose: dict[str, Any], network: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(compose["networks"][network]["ipam"]["config"][0]["subnet"])


def _config(command: list[str]) -> Any:
    """The gateway's configuration: its command with the image's config file."""
    assert command[:2] == ["--config", "/etc/ftpalg/ftpalg.toml"]
    config, _ = build_config(["--config", str(DOCKER / "ftpalg.toml"), *command[2:]])
    return config


def _check_layout(compose: dict[str, Any], networks: set[str], server: str) -> None:
    assert "name" not in compose  # Debian's docker-compose rejects it; the project is -p
    assert compose["x-podman"] == {"in_pod": False}  # podman-compose: no shared pod netns
    services = compose["services"]
    assert set(services) == {"gateway", server, "client"}
    assert set(compose["networks"]) == networks
    for name, service in services.items():
        assert "container_name" not in service  # two projects may run side by side
        for net in service["networks"]:
            assert _ip(service, net) in _subnet(compose, net), (name, net)
    addresses = [_ip(s, n) for s in services.values() for n in s["networks"]]
    assert len(addresses) == len(set(addresses))
    images = {name: s["image"] for name, s in services.items()}
    assert images == {
        "gateway": "ftpalg:latest",
        server: "ftpalg-lab-vsftpd:latest",
        "client": "ftpalg-lab-client:latest",
    }
    for name, service in services.items():
        build = service["build"]
        assert build["args"]["BASE"] == "debian:bookworm-slim"  # ${FTPALG_BASE:-...}
        context = DOCKER / build["context"]
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
    assert services["gateway"]["build"]["args"]["PIP_SOURCE"] == "index"


def test_reverse_layout(reverse: dict[str, Any]) -> None:
    _check_layout(reverse, {"clients", "private"}, "vsftpd")
    services, networks = reverse["services"], reverse["networks"]
    assert networks["private"].get("internal") is True  # the server has no other way out
    assert not networks["clients"].get("internal")  # ports are published on it
    assert set(services["gateway"]["networks"]) == {"clients", "private"}
    assert set(services["vsftpd"]["networks"]) == {"private"}
    assert set(services["client"]["networks"]) == {"clients"}  # reaches vsftpd only via ftpalg
    # podman publishes (DNATs) to the container's address on its first network by name
    assert sorted(services["gateway"]["networks"])[0] == "clients"


def test_reverse_gateway_needs_no_privilege(reverse: dict[str, Any]) -> None:
    gw = reverse["services"]["gateway"]
    assert "cap_add" not in gw and "privileged" not in gw and "user" not in gw  # image: ftpalg
    assert gw["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": 0}


def test_reverse_gateway_announces_the_published_address(reverse: dict[str, Any]) -> None:
    services = reverse["services"]
    gw = services["gateway"]
    config = _config(gw["command"])
    assert not config.transparent
    assert config.upstream is not None
    assert config.upstream.host == str(_ip(services["vsftpd"], "private"))
    assert config.upstream.port == 21
    published = ipaddress.IPv4Address(containers.PUBLISH_DEFAULT)
    assert config.announce_address == (published,)
    assert published == _subnet(reverse, "clients").network_address + 1  # the host's address
    assert reverse["networks"]["clients"]["ipam"]["config"][0]["gateway"] == str(published)
    lo, hi = config.data_ports
    assert gw["ports"] == [f"{published}:2121:21", f"{published}:{lo}-{hi}:{lo}-{hi}"]
    assert hi - lo + 1 >= 10  # room for a few sessions at once


def test_transparent_layout(transparent: dict[str, Any]) -> None:
    _check_layout(transparent, {"inside", "outside"}, "server")
    services, networks = transparent["services"], transparent["networks"]
    assert all(net.get("internal") is True for net in networks.values())
    assert set(services["gateway"]["networks"]) == {"inside", "outside"}
    assert set(services["server"]["networks"]) == {"outside"}
    assert set(services["client"]["networks"]) == {"inside"}
    assert "ports" not in services["gateway"]


def test_transparent_gateway_is_the_clients_router(transparent: dict[str, Any]) -> None:
    services = transparent["services"]
    gw, client = services["gateway"], services["client"]
    assert gw["user"] == "root" and gw["cap_add"] == ["NET_ADMIN"]
    assert gw["sysctls"] == {
        "net.ipv4.ip_forward": 1,
        "net.netfilter.nf_conntrack_acct": 1,
        "net.netfilter.nf_conntrack_events": 1,
    }
    config = _config(gw["command"])
    assert config.transparent and config.user == "ftpalg"
    assert [str(ep) for ep in config.listen] == ["0.0.0.0:21"]
    route = f"ip route replace default via {_ip(gw, 'inside')} || exit 1;"
    assert client["cap_add"] == ["NET_ADMIN"]
    assert client["command"][:2] == ["sh", "-c"] and client["command"][2].startswith(route)


def test_lab_driver_matches_the_compose_files(
    reverse: dict[str, Any], transparent: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FTPALG_PUBLISH_ADDRESS", raising=False)
    topo = containers.topologies()
    assert set(topo) == {"reverse", "transparent"}
    rv, tp = topo["reverse"], topo["transparent"]
    assert _load(rv.compose_file) == reverse and _load(tp.compose_file) == transparent
    assert rv.server == "vsftpd" and tp.server == "server"
    gw = reverse["services"]["gateway"]
    assert rv.passive_target == gw["ports"][0].rsplit(":", 1)[0]  # the published control port
    assert rv.active_target == f"{_ip(gw, 'clients')}:21"
    server = _ip(transparent["services"]["server"], "outside")
    assert tp.passive_target == tp.active_target == f"{server}:21"
    assert rv.project != tp.project
    monkeypatch.setenv("FTPALG_PUBLISH_ADDRESS", "198.51.100.7")
    assert containers.topologies()["reverse"].passive_target == "198.51.100.7:2121"


def test_vsftpd_config() -> None:
    conf = dict(
        line.split("=", 1)
        for line in (DOCKER / "vsftpd" / "vsftpd.conf").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert "pasv_address" not in conf  # 227 names its own address: ftpalg must rewrite it
    assert conf["background"] == "NO" and conf["listen"] == "YES"
    assert conf["seccomp_sandbox"] == "NO"  # vsftpd's sandbox fails in many container setups
    assert conf["port_enable"] == "YES" and conf["pasv_enable"] == "YES"
    assert conf["anon_upload_enable"] == "YES"
    assert not conf["vsftpd_log_file"].startswith("/dev/")  # it cannot open the stdout pipe
    dockerfile = (DOCKER / "vsftpd" / "Dockerfile").read_text()
    assert f"head -c {containers.FILE_SIZE} /dev/urandom > /srv/ftp/test.bin" in dockerfile
    cmd = re.search(r"^CMD \[\"sh\", \"-c\", \"(.*)\"\]$", dockerfile, re.M)
    assert cmd and not cmd.group(1).split("& ")[-2].startswith("exec")  # vsftpd is not PID 1


def test_dockerfiles_take_the_base_as_an_argument() -> None:
    for path in (DOCKER / "Dockerfile", DOCKER / "vsftpd/Dockerfile", DOCKER / "client/Dockerfile"):
        text = path.read_text()
        assert re.search(r"^ARG BASE=debian:bookworm-slim\nFROM \$\{BASE\}$", text, re.M), path
        assert "apt-get install -y --no-install-recommends" in text
    client = (DOCKER / "client" / "Dockerfile").read_text()
    assert re.search(r"apt-get install .*\bcurl\b.*\blftp\b.*\biproute2\b", client)


def test_ftpalg_image() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    logical = text.replace("\\\n", " ")
    install = re.search(r"apt-get install [^&\n]*", logical)
    assert install and {"python3", "python3-venv", "nftables", "iproute2"} <= set(
        install.group(0).split()
    )
    # both ways of installing take the pinned versions
    assert re.search(
        r"--no-index\s+--find-links /tmp/build/wheels -c /tmp/build/constraints.txt", logical
    )
    assert "pip install --no-cache-dir -c /tmp/build/constraints.txt /tmp/build/src" in text
    assert re.search(r"^USER ftpalg$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["ftpalg"\]$', text, re.M)
    assert re.search(r'^CMD \["--config", "/etc/ftpalg/ftpalg.toml"\]$', text, re.M)
    assert re.search(r"^COPY docker/ftpalg.toml /etc/ftpalg/ftpalg.toml$", text, re.M)
    health = re.search(r"^HEALTHCHECK .*\n\s+CMD (.*)$", text, re.M)
    metrics = tomllib.loads((DOCKER / "ftpalg.toml").read_text())["metrics"]
    assert health and f"http://{metrics}/metrics" in health.group(1)
    config, _ = build_config(["--config", str(DOCKER / "ftpalg.toml")])
    assert config.log_format == "json"  # the lab reads the rewrite events from the logs
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for src in copied.split():
            assert f"!{src}" in ignore or f"!{src}/" in ignore, src
    assert "*" in ignore


def test_versions_are_pinned() -> None:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        name = re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0].lower()
        assert name in pins, f"{name} is not pinned in docker/constraints.txt"
    script = (ROOT / "scripts" / "compose_lab.sh").read_text()
    assert "-c docker/constraints.txt podman-compose" in script
    assert "pip wheel -q -c docker/constraints.txt" in script
    assert "podman-compose" in pins


def test_compose_lab_script_prepares_podman_for_these_machines() -> None:
    script = (ROOT / "scripts" / "compose_lab.sh").read_text()
    conf = script[script.index("[containers]") : script.index("EOF", script.index("[containers]"))]
    assert 'runtime = "runc"' in conf and 'cgroup_manager = "cgroupfs"' in conf
    assert 'network_backend = "netavark"' in conf and "default_ulimits" in conf
    for package in ("podman", "runc", "netavark", "debootstrap"):
        assert re.search(rf"^for p in .*\b{package}\b", script, re.M), package
    assert "debootstrap --variant=minbase bookworm" in script
    assert "base=localhost/ftpalg-base:bookworm" in script
    assert "export FTPALG_BASE=$base FTPALG_PIP_SOURCE=wheels" in script
    assert '--compose "podman-compose --podman-build-args=--network=host"' in script
    assert "--compose docker-compose" in script
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci.index("./scripts/compose_lab.sh") > ci.index("make test")


def test_render_and_client_commands() -> None:
    ok = containers.Row(
        topology="reverse",
        mode="curl-pasv",
        upload=False,
        target="172.30.1.1:2121",
        ok=True,
        seconds=0.5,
        client_cmd="227 Entering Passive Mode (172,30,1,1,195,80).\\r\\n",
        server_cmd="227 Entering Passive Mode (172,30,2,20,117,52).\\r\\n",
        plane="relay",
    )
    bad = containers.Row("transparent", "lftp-active", True, "172.31.2.20:21", False, 0, "boom")
    text = containers.render([ok, bad])
    lines = text.splitlines()
    header = "lab mode dir connects to client side server side plane ftpalg MB/s"
    assert lines[0].split() == header.split()
    assert "227 (172,30,1,1,195,80)" in lines[2] and lines[2].split()[-2:] == ["ok", "16.8"]
    assert "FAIL [1]" in lines[3]
    assert "[1] transparent lftp-active put: boom" in text
    assert text.endswith("ftpalg: 1/2 ok\n")
    argv = containers._client_argv("curl-port", False, "172.30.1.10:21", "x.bin")
    assert argv[:2] == ["sh", "-c"] and "--disable-eprt" in argv
    assert argv[-1] == "ftp://172.30.1.10:21/test.bin"
    argv = containers._client_argv("lftp-passive", True, "172.30.1.1:2121", "x.bin")
    assert argv[-3] == "lftp" and "set ftp:passive-mode on" in argv[-1]
    assert "put /tmp/upload.bin -o upload/x.bin" in argv[-1]


def test_no_engine_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(containers.LabFailure, match="no container engine"):
        containers.find_compose(None)
    assert containers.find_compose("podman-compose --verbose") == ["podman-compose", "--verbose"]
    assert containers.Engine(["podman-compose"]).cli == "podman"
    assert containers.Engine(["docker-compose"]).cli == "podman"  # podman's Docker API
    (tmp_path / "docker").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "docker").chmod(0o755)
    assert containers.Engine(["docker", "compose"]).cli == "docker"
    assert containers.Engine(["podman-compose"]).env["BUILDAH_FORMAT"] == "docker"
    with pytest.raises(containers.LabFailure, match="no container engine"):
        containers.find_compose(None)  # a docker CLI without a daemon does not count
