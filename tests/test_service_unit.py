"""conf/ftpalg.service: the sandboxing directives a network daemon needs, and an ExecStart
that ftpalg's own parser accepts."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from ftpalg.ops.config import Config, build_config
from ftpalg.ops.privileges import KEEP

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "conf" / "ftpalg.service"
CAP_NAMES = {10: "CAP_NET_BIND_SERVICE", 12: "CAP_NET_ADMIN"}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's syntax: [Section], Key=Value (repeatable), # and ; comments, \\ continuation."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_sandboxing_directives() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in unit["Service"].items()}
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "User": "ftpalg",
        "LogsDirectory": "ftpalg",
    }
    assert {k: service.get(k) for k in expected} == expected
    caps = {CAP_NAMES[c] for c in KEEP}  # exactly what --user keeps, no more
    assert set(service["AmbientCapabilities"].split()) == caps
    assert set(service["CapabilityBoundingSet"].split()) == caps
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_exec_lines_parse_with_build_config() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    example = str(ROOT / "conf" / "ftpalg.toml")

    def config_of(line: str) -> Config:
        argv = shlex.split(line)
        assert argv[0].endswith("/ftpalg")
        config, parsed = build_config(
            [example if a == "/etc/ftpalg/ftpalg.toml" else a for a in argv[1:]]
        )
        assert parsed.config == example
        return config

    config_of(service["ExecStartPre"][0])
    config = config_of(service["ExecStart"][0])
    assert config.user is None  # systemd's User= drops root; ftpalg need not
    assert str(config.metrics) == "127.0.0.1:9121" and config.xferlog == "/var/log/ftpalg/xferlog"
    assert float(service["TimeoutStopSec"][0]) > config.grace_period  # drain, then clean up
    plain = dataclasses.replace(config, metrics=None, xferlog=None)
    assert plain == build_config(["--config", example])[0]
