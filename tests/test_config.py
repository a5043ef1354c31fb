"""ftpalg.ops.config: precedence (defaults < file < CLI), one-line errors, the example config."""

from __future__ import annotations

import dataclasses
import re
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ftpalg
from ftpalg.ops.config import (
    Config,
    ConfigError,
    Endpoint,
    HostPort,
    build_config,
    load_toml,
    parse_endpoint,
    parse_host_port,
    parse_port_range,
)
from ftpalg.ops.flags import build_parser
from ftpalg.ops.reload import check_config, plan_reload

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "conf" / "ftpalg.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return path


def assert_one_line(message: str) -> None:
    assert message and message.isprintable(), repr(message)


# --- address helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:21", Endpoint(IPv4Address("0.0.0.0"), 21)),
        ("[::]:21", Endpoint(IPv6Address("::"), 21)),
        ("[2001:db8::1]:2121", Endpoint(IPv6Address("2001:db8::1"), 2121)),
        ("[2001:DB8:0::1]:21", Endpoint(IPv6Address("2001:db8::1"), 21)),
        ("192.0.2.7:65535", Endpoint(IPv4Address("192.0.2.7"), 65535)),
    ],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("ftp.example:21", None, HostPort("ftp.example", 21)),
        ("FTP.Example.:2121", None, HostPort("ftp.example.", 2121)),
        ("10.0.0.5:21", None, HostPort("10.0.0.5", 21)),
        ("[2001:db8::5]:21", None, HostPort("2001:db8::5", 21)),
        ("ftp.example", 21, HostPort("ftp.example", 21)),
        ("[::1]", 2121, HostPort("::1", 2121)),
    ],
)
def test_parse_host_port(text: str, default: int | None, expected: HostPort) -> None:
    assert parse_host_port(text, default) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("::1:21", "'::1:21': write IPv6 addresses in brackets, e.g. [::1]:21"),
        ("1.2.3.4", "'1.2.3.4': expected HOST:PORT"),
        ("1.2.3.4:0", "0 is not a port (1-65535)"),
        ("1.2.3.4:65536", "65536 is not a port (1-65535)"),
        ("1.2.3.4:x", "'x' is not a port (1-65535)"),
        ("1.2.3.4: 21", "' 21' is not a port (1-65535)"),
        ("1.2.3.4:", "'' is not a port (1-65535)"),
        ("[::1]21", "'[::1]21': expected [IPv6]:PORT"),
        ("[::1:21", "'[::1:21': expected [IPv6]:PORT"),
        ("[1.2.3.4]:21", "'[1.2.3.4]:21': '1.2.3.4' is not an IPv6 address"),
        ("1.2.3.256:21", "'1.2.3.256:21': '1.2.3.256' is not an IP address or host name"),
        ("bad_name:21", "'bad_name:21': 'bad_name' is not an IP address or host name"),
        (":21", "':21': '' is not an IP address or host name"),
        ("ftp.example:21", "'ftp.example:21': listen on an IP address, not a name"),
    ],
)
def test_parse_endpoint_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(text)
    assert str(info.value) == message


@given(st.ip_addresses(), st.integers(1, 65535))
def test_endpoint_str_round_trips(host: IPv4Address | IPv6Address, port: int) -> None:
    endpoint = Endpoint(host, port)
    assert parse_endpoint(str(endpoint)) == endpoint
    assert parse_host_port(str(endpoint)) == HostPort(str(host), port)


def test_str_forms() -> None:
    assert str(Endpoint(IPv4Address("1.2.3.4"), 21)) == "1.2.3.4:21"
    assert str(Endpoint(IPv6Address("::"), 21)) == "[::]:21"
    assert str(HostPort("2001:db8::5", 2121)) == "[2001:db8::5]:2121"
    assert str(HostPort("ftp.example", 21)) == "ftp.example:21"
    assert parse_port_range("40000-40000") == (40000, 40000)


# --- precedence --------------------------------------------------------------------------------

V4 = Endpoint(IPv4Address("192.0.2.1"), 21)
V6 = Endpoint(IPv6Address("::"), 2121)


@pytest.mark.parametrize(
    ("file_text", "argv", "changes"),
    [
        ("", [], {}),
        ("loose = true", [], {"loose": True}),
        ("loose = true", ["--strict"], {}),
        ("", ["--loose"], {"loose": True}),
        ('listen = ["192.0.2.1:21", "[::]:2121"]', [], {"listen": (V4, V6)}),
        ('listen = ["192.0.2.1:21"]', ["--listen", "[::]:2121"], {"listen": (V6,)}),
        ("", ["--listen", "192.0.2.1:21", "--listen", "[::]:2121"], {"listen": (V4, V6)}),
        ('upstream = "[2001:db8::5]:2121"', [], {"upstream": HostPort("2001:db8::5", 2121)}),
        (
            'upstream = "a.example"',
            ["--upstream", "b.example:2121"],
            {"upstream": HostPort("b.example", 2121)},
        ),
        ('data_ports = "41000-42000"', [], {"data_ports": (41000, 42000)}),
        (
            "data_ports = [41000, 42000]",
            ["--data-ports", "50000-50010"],
            {"data_ports": (50000, 50010)},
        ),
        (
            "allow_low_data_ports = true",
            ["--data-ports", "100-200"],
            {"allow_low_data_ports": True, "data_ports": (100, 200)},
        ),
        (
            'data_ports = "100-200"',
            ["--allow-low-data-ports"],
            {"allow_low_data_ports": True, "data_ports": (100, 200)},
        ),
        ("idle_timeout = 10", [], {"idle_timeout": 10.0}),
        ("idle_timeout = 10", ["--idle-timeout", "2.5"], {"idle_timeout": 2.5}),
        ("grace_period = 1", ["--grace-period", "0"], {"grace_period": 0.0}),
        (
            "expect_timeout = 60.0",
            ["--connect-timeout", "3"],
            {"expect_timeout": 60.0, "connect_timeout": 3.0},
        ),
        ("max_sessions = 5", ["--max-sessions", "7"], {"max_sessions": 7}),
        ("kernel_setup = true", ["--no-kernel-setup"], {"kernel_setup": False}),
        ("source_transparent = true", [], {"source_transparent": True}),
        ("", ["--source-transparent"], {"source_transparent": True}),
        ('inside_interfaces = ["eth1"]', [], {"inside_interfaces": ("eth1",)}),
        (
            'inside_interfaces = ["eth1"]',
            ["--inside-interface", "eth2", "--inside-interface", "eth3"],
            {"inside_interfaces": ("eth2", "eth3")},
        ),
        ('log_format = "console"', [], {"log_format": "console"}),
        (
            'log_format = "console"\nlog_level = "debug"',
            ["--log-format", "json"],
            {"log_level": "debug"},
        ),
        (
            "tproxy_mark = 7\nroute_table = 200",
            ["--route-table", "201"],
            {"tproxy_mark": 7, "route_table": 201},
        ),
        ("max_line = 512", [], {"max_line": 512}),
        ("", ["--max-line", "8192"], {"max_line": 8192}),
    ],
)
def test_precedence(
    tmp_path: Path, file_text: str, argv: list[str], changes: dict[str, Any]
) -> None:
    path = write(tmp_path, file_text)
    config, args = build_config(["--config", str(path), *argv])
    assert config == dataclasses.replace(Config(), **changes)
    assert args.config == str(path)


def test_defaults_without_file() -> None:
    config, _ = build_config([])
    assert config == Config()
    assert config.listen == (Endpoint(IPv4Address("0.0.0.0"), 21),)
    assert config.transparent and config.log_format == "json" and config.max_line == 4096
    assert not build_config(["--upstream", "10.0.0.5"])[0].transparent


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_text", "message"),
    [
        ('data_ports = "1000-70000"', "data_ports: 70000 is not a port (1-65535)"),
        ("data_ports = [70000, 2]", "data_ports: 70000 is not a port (1-65535)"),
        ('data_ports = "2000-1000"', "data_ports: 2000-1000: low port is above high port"),
        (
            'data_ports = "100-2000"',
            "data_ports: 100-2000 includes ports below 1024 (set allow_low_data_ports to permit)",
        ),
        ("data_ports = [1, 2, 3]", 'data_ports: expected "LOW-HIGH" or [LOW, HIGH], got list'),
        ('data_ports = "40000"', "data_ports: '40000': expected LOW-HIGH, e.g. 40000-60999"),
        ("bogus = 1", "unknown key 'bogus'"),
        ('data_port = "1-2"', "unknown key 'data_port' (did you mean 'data_ports'?)"),
        ('[log]\nformat = "json"', "unknown key 'log' (did you mean 'xferlog'?)"),
        ('loose = "yes"', "loose: expected true or false, got str"),
        ("max_sessions = true", "max_sessions: expected an integer, got bool"),
        ("max_sessions = 1.5", "max_sessions: expected an integer, got float"),
        ("max_sessions = 0", "max_sessions: 0 is out of range (1-1000000)"),
        ('idle_timeout = "5"', "idle_timeout: expected a number of seconds, got str"),
        ("idle_timeout = -5", "idle_timeout: -5 must be > 0"),
        ("expect_timeout = 0", "expect_timeout: 0 must be > 0"),
        ("connect_timeout = inf", "connect_timeout: inf is not a finite number"),
        ("grace_period = -1", "grace_period: -1 must be >= 0"),
        ('listen = "0.0.0.0:21"', "listen: expected a list of strings, got str"),
        ("listen = [21]", "listen: expected a list of strings, got list"),
        ("listen = []", "listen: at least one is needed"),
        (
            'listen = ["::1:21"]',
            "listen: '::1:21': write IPv6 addresses in brackets, e.g. [::1]:21",
        ),
        ('listen = ["1.2.3.4:0"]', "listen: 0 is not a port (1-65535)"),
        ('listen = ["1.2.3.4:21", "1.2.3.4:21"]', "listen: 1.2.3.4:21 given more than once"),
        (
            'upstream = "bad host:21"',
            "upstream: 'bad host:21': 'bad host' is not an IP address or host name",
        ),
        ('log_level = "trace"', "log_level: 'trace' is not one of debug, info, warning, error"),
        ('log_format = "xml"', "log_format: 'xml' is not one of json, console"),
        (
            "route_table = 254",
            "route_table: 254 is out of range (1-4294967295, not 0, 253, 254, 255)",
        ),
        ("tproxy_mark = 0", "tproxy_mark: 0 is out of range (1-4294967295)"),
        ("max_line = 100", "max_line: 100 is out of range (512-65536)"),
        ('inside_interfaces = ["a/b"]', "inside_interfaces: 'a/b' is not a valid interface name"),
        ('inside_interfaces = ["eth1", "eth1"]', "inside_interfaces: eth1 given more than once"),
        ('upstream = "a\\nb:21"', r"upstream: 'a\nb:21': 'a\nb' is not an IP address or host name"),
        ("loose =\n", "TOML syntax error: Invalid value (at line 1, column 8)"),
        (
            "loose = true\nloose = false",
            "TOML syntax error: Cannot overwrite a value (at end of document)",
        ),
    ],
)
def test_file_errors(tmp_path: Path, file_text: str, message: str) -> None:
    path = write(tmp_path, file_text)
    with pytest.raises(ConfigError) as info:
        build_config(["--config", str(path)])
    assert str(info.value) == f"config {path}: {message}"
    assert_one_line(str(info.value))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data-ports", "70000-80000"], "--data-ports: 70000 is not a port (1-65535)"),
        (
            ["--data-ports", "100-200"],
            "--data-ports: 100-200 includes ports below 1024 (set allow_low_data_ports to permit)",
        ),
        (
            ["--listen", "::1:21"],
            "--listen: '::1:21': write IPv6 addresses in brackets, e.g. [::1]:21",
        ),
        (["--listen", "1.2.3.4"], "--listen: '1.2.3.4': expected HOST:PORT"),
        (["--listen", "1.2.3.4:0"], "--listen: 0 is not a port (1-65535)"),
        (["--listen", "1.2.3.4:x"], "--listen: 'x' is not a port (1-65535)"),
        (["--listen", "[::]:21", "--listen", "[::]:21"], "--listen: [::]:21 given more than once"),
        (
            ["--upstream", "::1"],
            "--upstream: '::1': write IPv6 addresses in brackets, e.g. [::1]:21",
        ),
        (["--idle-timeout", "-1"], "--idle-timeout: -1 must be > 0"),
        (["--expect-timeout", "soon"], "--expect-timeout: 'soon' is not a number"),
        (["--grace-period", "nan"], "--grace-period: nan is not a finite number"),
        (["--max-sessions", "1e3"], "--max-sessions: '1e3' is not a whole number"),
        (["--max-line", "511"], "--max-line: 511 is out of range (512-65536)"),
        (
            ["--inside-interface", "x" * 16],
            f"--inside-interface: '{'x' * 16}' is not a valid interface name",
        ),
        (["--loose", "--strict"], "--strict: not allowed with argument --loose"),
        (
            ["--log-format", "xml"],
            "--log-format: invalid choice: 'xml' (choose from 'json', 'console')",
        ),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--loo"], "unrecognized arguments: --loo"),  # no abbreviations
        (["lab", "up"], "unrecognized arguments: lab up"),  # cli.py dispatches subcommands
        (["--config"], "--config: expected one argument"),
    ],
)
def test_cli_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(argv)
    assert str(info.value) == message
    assert_one_line(str(info.value))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.toml", None, "cannot read: No such file or directory"),
        ("dir.toml", "dir", "cannot read: Is a directory"),
        ("latin1.toml", b"log_level = '\xe9'", "not UTF-8 text"),
        ("new\nline\x1b.toml", None, "cannot read: No such file or directory"),
    ],
)
def test_file_read_errors(
    tmp_path: Path, name: str, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert_one_line(str(info.value))
    assert str(info.value).endswith(f": {message}")
    assert str(info.value).startswith("config ")


def test_config_error_is_one_printable_line() -> None:
    err = ConfigError("a\nb\r\x1b[31mc\u2028d", key="k")
    assert str(err) == r"a\nb\r\x1b[31mc\u2028d"
    assert err.key == "k"


def test_bad_value_in_file_is_reported_even_when_the_cli_overrides_it(tmp_path: Path) -> None:
    path = write(tmp_path, "max_sessions = 0")
    with pytest.raises(ConfigError, match="max_sessions: 0 is out of range"):
        build_config(["--config", str(path), "--max-sessions", "5"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data_ports": (100, 200)}, "data_ports: 100-200 includes ports below 1024"),
        ({"data_ports": (2, 1)}, "data_ports: 2-1: low port is above high port"),
        ({"max_line": 511}, "max_line: 511 is out of range (512-65536)"),
        ({"listen": ()}, "listen: at least one is needed"),
        ({"expect_timeout": -1.0}, "expect_timeout: -1 must be > 0"),
        ({"loose": 1}, "loose: wrong type int"),
        ({"max_sessions": "10"}, "max_sessions: wrong type str"),
    ],
)
def test_config_checks_direct_construction(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**changes)
    assert str(info.value).startswith(message)
    assert info.value.key == next(iter(changes))


# --- --version, --help, the example file -------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_config(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"ftpalg {ftpalg.__version__}\n"


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    with pytest.raises(SystemExit) as info:
        build_config(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ftpalg")
    for flag in [
        "--listen",
        "--upstream",
        "--loose",
        "--strict",
        "--config",
        "--data-ports",
        "--expect-timeout",
        "--max-sessions",
        "--idle-timeout",
        "--connect-timeout",
        "--grace-period",
        "--allow-low-data-ports",
        "--source-transparent",
        "--inside-interface",
        "--log-format",
        "--log-level",
        "--no-kernel-setup",
        "--nat64-prefix",
        "--version",
    ]:
        assert flag in out


def test_every_config_key_has_a_flag() -> None:
    dests = {action.dest for action in build_parser()._actions}
    assert {f.name for f in dataclasses.fields(Config)} <= dests


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    config, _ = build_config(["--config", "conf/ftpalg.toml"])
    assert config == Config()


TRANSPARENT_IPV6_ONLY = {"nat64_prefix"}  # the example upstream (reverse mode) excludes it


def test_example_config_documents_every_option_with_its_default(tmp_path: Path) -> None:
    """Uncomment the first example line of each key: the result is the defaults (plus the
    example upstream, which has no default), and every Config field is documented."""
    seen: set[str] = set()
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        match = re.match(r"# (\w+) = ", line)
        if match and match.group(1) not in seen:
            seen.add(match.group(1))
            if match.group(1) not in TRANSPARENT_IPV6_ONLY:
                line = line[2:]
        lines.append(line)
    assert seen == {f.name for f in dataclasses.fields(Config)}
    config, _ = build_config(["--config", str(write(tmp_path, "\n".join(lines)))])
    assert config == Config(
        upstream=HostPort("10.0.0.5", 21),
        metrics=parse_endpoint("127.0.0.1:9121"),
        xferlog="/var/log/ftpalg/xferlog",
        user="ftpalg",
        tls_cert="/etc/ftpalg/tls/cert.pem",
        tls_key="/etc/ftpalg/tls/key.pem",
    )  # the keys without a default: their examples


def test_listen_addresses_are_ipaddress_objects() -> None:
    config, _ = build_config(["--listen", "[fe80::1%eth0]:21"])
    assert config.listen[0].host == ip_address("fe80::1%eth0")
    assert str(config.listen[0]) == "[fe80::1%eth0]:21"


def test_marks_may_be_written_in_hex() -> None:
    config, _ = build_config(["--tproxy-mark", "0x10", "--route-table", "0x64"])
    assert (config.tproxy_mark, config.route_table) == (16, 100)
    with pytest.raises(ConfigError, match="not a whole number"):
        build_config(["--tproxy-mark", "0xg"])


def test_help_names_the_other_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_config(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "'ftpalg lab'" in out and "'ftpalg cleanup'" in out


def test_tls_defaults_follow_the_mode() -> None:
    """AUTH passes through in transparent mode (as the kernel helper lets FTPS through);
    reverse mode refuses it unless told otherwise (an encrypted 227 there names the server's
    private address, which no client can reach)."""
    from ftpalg.proxy.gateway import core_policy

    assert core_policy(Config()).tls == "passthrough"
    reverse = build_config(["--upstream", "10.0.0.5"])[0]
    assert core_policy(reverse).tls == "refuse"
    assert core_policy(build_config(["--upstream", "10.0.0.5", "--tls", "passthrough"])[0]).tls == (
        "passthrough"
    )


def test_nat64_prefix() -> None:
    config, _ = build_config(["--listen", "[::]:21", "--nat64-prefix", "64:ff9b::/96"])
    assert config.nat64_prefix == IPv6Network("64:ff9b::/96")
    assert Config().nat64_prefix is None  # off by default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nat64-prefix", "64:ff9b::/80"], "lengths 32, 40, 48, 56, 64 or 96 only"),
        (["--nat64-prefix", "2001:db8::100:0:0:0/96"], "bits 64-71 (the u octet) must be zero"),
        (["--nat64-prefix", "64:ff9b::"], "with its length"),
        (["--nat64-prefix", "64:ff9b::/96"], "--nat64-prefix: needs an IPv6 listener"),
        (
            ["--listen", "[::]:21", "--upstream", "192.0.2.1", "--nat64-prefix", "64:ff9b::/96"],
            "--nat64-prefix: transparent mode only",
        ),
    ],
)
def test_nat64_prefix_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(argv)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_nat64_prefix_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = ["[::]:21"]\nnat64_prefix = "2001:db8:122::/48"\n')
    config, _ = build_config(["--config", str(path)])
    assert config.nat64_prefix == IPv6Network("2001:db8:122::/48")
    bad = write(tmp_path, 'listen = ["[::]:21"]\nnat64_prefix = "2001:db8:122::/47"\n')
    with pytest.raises(ConfigError, match="nat64_prefix: '2001:db8:122::/47': RFC 6052"):
        build_config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="nat64_prefix: wrong type str"):
        Config(listen=(parse_endpoint("[::]:21"),), nat64_prefix="64:ff9b::/96")  # type: ignore[arg-type]


def test_check_config_shows_the_nat64_prefix_and_sighup_applies_it() -> None:
    status, line = check_config(["--listen", "[::]:21", "--nat64-prefix", "64:ff9b::/96"])
    assert status == 0
    assert line == (
        "ftpalg: built-in defaults and flags: OK (transparent, NAT64 prefix 64:ff9b::/96,"
        " listen [::]:21)"
    )
    status, line = check_config(["--listen", "[::]:21", "--nat64-prefix", "64:ff9b::/72"])
    assert (status, line) == (
        2,
        "ftpalg: --nat64-prefix: '64:ff9b::/72': RFC 6052 allows the prefix lengths"
        " 32, 40, 48, 56, 64 or 96 only",
    )
    current, _ = build_config(["--listen", "[::]:21"])
    reload = plan_reload(current, ["--listen", "[::]:21", "--nat64-prefix", "64:ff9b::/96"])
    assert reload.changed == ("nat64_prefix",) and reload.needs_restart == ()
    assert reload.config.nat64_prefix == IPv6Network("64:ff9b::/96")
