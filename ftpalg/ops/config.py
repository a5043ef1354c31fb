"""Daemon configuration: defaults < TOML file (``--config``) < command line.

Each value is checked where it enters, so an error names its source and key in one line:
``config conf/x.toml: data_ports: 70000 is not a port (1-65535)`` or
``--idle-timeout: -1 must be > 0``. A bad value in the file is an error even when a flag
overrides it. Cross-key checks (low data ports) run after merging and name the source of the
offending key. ``Config.__post_init__`` re-checks every invariant, so code that builds a
``Config`` directly (tests, the lab) cannot make one the daemon would refuse. The flags
themselves (names, help, parsers) are in ops/flags.py.
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, Literal

from ftpalg.core.rfc6052 import check_prefix, parse_prefix
from ftpalg.ops.values import (
    DEFAULT_TLS_CIPHERS,
    Endpoint,
    HostPort,
    check_announce,
    check_ifname,
    check_path,
    check_port_range,
    check_tls_ciphers,
    check_tls_version,
    check_user,
    choice,
    int_range,
    optional,
    parse_announce,
    parse_endpoint,
    parse_host_port,
    parse_port_range,
    seconds,
    str_then,
    strings,
    toml_port_range,
    toml_tls_version,
    typed,
    unique,
)

__all__ = [
    "Config",
    "ConfigError",
    "Endpoint",
    "HostPort",
    "build_config",
    "load_toml",
    "parse_endpoint",
    "parse_host_port",
    "parse_port_range",
]

LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
DataPlaneMode = Literal["relay", "kernel", "auto"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
DATA_PLANES: tuple[DataPlaneMode, ...] = ("relay", "kernel", "auto")
TlsMode = Literal["auto", "passthrough", "refuse", "terminate"]
TLS_MODES: tuple[TlsMode, ...] = ("auto", "passthrough", "refuse", "terminate")
DataPolicy = Literal["client", "passive", "active", "PASV", "EPSV", "PORT", "EPRT"]
DATA_POLICIES: tuple[DataPolicy, ...] = (
    "client",
    "passive",
    "active",
    "PASV",
    "EPSV",
    "PORT",
    "EPRT",
)
MIN_LINE, MAX_LINE = 512, 65536
RESERVED_TABLES = frozenset({0, 253, 254, 255})  # unspec, default, main, local
FTP_PORT = 21


class ConfigError(Exception):
    """A bad configuration. ``str(err)`` is one printable line; ``key`` names the option."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__("".join(c if c.isprintable() else ascii(c)[1:-1] for c in message))
        self.key = key


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[Endpoint, ...] = (Endpoint(IPv4Address("0.0.0.0"), FTP_PORT),)
    upstream: HostPort | None = None  # None: transparent mode (each original destination)
    loose: bool = False
    allow_low_data_ports: bool = False
    data_ports: tuple[int, int] = (40000, 60999)  # inclusive
    announce_address: tuple[IPv4Address | IPv6Address, ...] = ()  # reverse mode, 227
    tls: TlsMode = "auto"  # AUTH: auto = passthrough in transparent, refuse in reverse mode
    tls_cert: str | None = None  # terminate: the certificate chain (PEM)
    tls_key: str | None = None  # terminate: its private key (PEM)
    require_tls: bool = False  # terminate: USER/PASS before AUTH TLS get 530
    tls_ciphers: str = DEFAULT_TLS_CIPHERS  # terminate: OpenSSL cipher string for TLS 1.2
    tls_min_version: str = "1.2"  # terminate: "1.2" or "1.3"
    tls_upstream: bool = False  # terminate: explicit FTPS to the server too (tls_upstream.py)
    listen_implicit: tuple[Endpoint, ...] = ()  # terminate: implicit FTPS (TLS at once)
    data_policy: DataPolicy = "client"  # data-mode conversion (docs/conversion.md)
    nat64_prefix: IPv6Network | None = None  # transparent NAT64 (docs/nat64.md); None: off
    expect_timeout: float = 300.0
    max_sessions: int = 1000
    idle_timeout: float = 900.0
    line_timeout: float = 60.0
    connect_timeout: float = 10.0
    grace_period: float = 30.0
    source_transparent: bool = False  # upstream socket bound to the client's own address
    data_plane: DataPlaneMode = "auto"  # who carries data connections (docs/data-plane.md)
    log_format: LogFormat = "json"
    log_level: LogLevel = "info"
    kernel_setup: bool = True
    tproxy_mark: int = 1
    route_table: int = 100
    inside_interfaces: tuple[str, ...] = ()  # empty: divert from every interface
    max_line: int = 4096
    metrics: Endpoint | None = None  # serve Prometheus metrics here
    xferlog: str | None = None  # transfer log file (xferlog format)
    user: str | None = None  # switch to this user after the root-only set-up

    @property
    def transparent(self) -> bool:
        return self.upstream is None

    def __post_init__(self) -> None:
        for name, spec in _SPECS.items():
            try:
                spec.check(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}", key=name) from None
            except TypeError:
                kind = type(getattr(self, name)).__name__
                raise ConfigError(f"{name}: wrong type {kind}", key=name) from None
        lo, hi = self.data_ports
        if lo < 1024 and not self.allow_low_data_ports:
            msg = f"{lo}-{hi} includes ports below 1024 (set allow_low_data_ports to permit)"
            raise ConfigError(f"data_ports: {msg}", key="data_ports")
        if self.tls == "terminate" and (self.tls_cert is None or self.tls_key is None):
            raise ConfigError("tls: terminate needs tls_cert and tls_key (PEM files)", key="tls")
        if self.listen_implicit and self.tls != "terminate":
            msg = "needs tls = terminate (ftpalg is the TLS server there)"
            raise ConfigError(f"listen_implicit: {msg}", key="listen_implicit")
        if self.tls_upstream and self.tls != "terminate":
            msg = "needs tls = terminate (ftpalg speaks TLS to both sides)"
            raise ConfigError(f"tls_upstream: {msg}", key="tls_upstream")
        if self.tls == "terminate" and self.upstream is None:
            raise ConfigError("tls: terminate needs reverse mode (upstream)", key="tls")
        if self.nat64_prefix is not None and self.upstream is not None:
            msg = "transparent mode only (reverse mode translates an IPv6 listener with an IPv4"
            raise ConfigError(f"nat64_prefix: {msg} upstream without a prefix)", "nat64_prefix")
        if self.nat64_prefix is not None and all(ep.host.version == 4 for ep in self.listen):
            msg = "needs an IPv6 listener (e.g. listen [::]:21): NAT64 clients are IPv6"
            raise ConfigError(f"nat64_prefix: {msg}", key="nat64_prefix")
        if self.announce_address and self.upstream is None:
            msg = "needs reverse mode (upstream): a transparent client sees the server's address"
            raise ConfigError(f"announce_address: {msg}", key="announce_address")


@dataclass(frozen=True, slots=True)
class _Spec:
    from_toml: Callable[[Any], Any]  # TOML value -> field value
    check: Callable[[Any], Any]  # validates a field value


_BOOL = _Spec(typed("true or false", bool), typed("true or false", bool))
_INT = typed("an integer", int)
_NUMBER = typed("a number of seconds", int, float)
_SPECS: dict[str, _Spec] = {
    "listen": _Spec(strings(parse_endpoint), lambda v: unique(v, empty_ok=False)),
    "upstream": _Spec(str_then(lambda s: parse_host_port(s, FTP_PORT)), lambda v: v),
    "loose": _BOOL,
    "allow_low_data_ports": _BOOL,
    "data_ports": _Spec(toml_port_range, check_port_range),
    "announce_address": _Spec(strings(parse_announce), check_announce),
    "expect_timeout": _Spec(_NUMBER, seconds(zero_ok=False)),
    "max_sessions": _Spec(_INT, int_range(1, 1_000_000)),
    "idle_timeout": _Spec(_NUMBER, seconds(zero_ok=False)),
    "line_timeout": _Spec(_NUMBER, seconds(zero_ok=False)),
    "connect_timeout": _Spec(_NUMBER, seconds(zero_ok=False)),
    "grace_period": _Spec(_NUMBER, seconds(zero_ok=True)),
    "source_transparent": _BOOL,
    "data_plane": _Spec(str_then(choice(DATA_PLANES)), choice(DATA_PLANES)),
    "tls": _Spec(str_then(choice(TLS_MODES)), choice(TLS_MODES)),
    "data_policy": _Spec(str_then(choice(DATA_POLICIES)), choice(DATA_POLICIES)),
    "nat64_prefix": _Spec(str_then(parse_prefix), optional(check_prefix)),
    "tls_cert": _Spec(str_then(check_path), optional(check_path)),
    "tls_key": _Spec(str_then(check_path), optional(check_path)),
    "require_tls": _BOOL,
    "tls_ciphers": _Spec(str_then(check_tls_ciphers), check_tls_ciphers),
    "tls_min_version": _Spec(toml_tls_version, check_tls_version),
    "tls_upstream": _BOOL,
    "listen_implicit": _Spec(strings(parse_endpoint), unique),
    "log_format": _Spec(str_then(choice(LOG_FORMATS)), choice(LOG_FORMATS)),
    "log_level": _Spec(str_then(choice(LOG_LEVELS)), choice(LOG_LEVELS)),
    "kernel_setup": _BOOL,
    "tproxy_mark": _Spec(_INT, int_range(1, 2**32 - 1)),
    "route_table": _Spec(_INT, int_range(1, 2**32 - 1, RESERVED_TABLES)),
    "inside_interfaces": _Spec(
        strings(check_ifname), lambda v: unique(tuple(map(check_ifname, v)))
    ),
    "max_line": _Spec(_INT, int_range(MIN_LINE, MAX_LINE)),
    "metrics": _Spec(str_then(parse_endpoint), optional(lambda v: v)),
    "xferlog": _Spec(str_then(check_path), optional(check_path)),
    "user": _Spec(str_then(check_user), optional(check_user)),
}


# --- sources: the TOML file and the command line ---------------------------------------------


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file into checked field values (keys as in ``Config``)."""
    where = f"config {path}"
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: TOML syntax error: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        spec = _SPECS.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, _SPECS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}", key=key)
        try:
            values[key] = spec.check(spec.from_toml(value))
        except TypeError as exc:
            got = type(value).__name__
            raise ConfigError(f"{where}: {key}: expected {exc}, got {got}", key=key) from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}", key=key) from None
    return values


def build_config(argv: Sequence[str]) -> tuple[Config, argparse.Namespace]:
    """Parse daemon flags into a ``Config``. Errors raise ``ConfigError`` (one line);
    ``--help`` and ``--version`` print and raise ``SystemExit(0)`` as argparse does."""
    from ftpalg.ops.flags import build_parser  # the flags read this module's key specs

    args = build_parser().parse_args(list(argv))
    source: dict[str, str] = {}
    values: dict[str, Any] = {}
    if args.config is not None:
        values = load_toml(args.config)
        source = dict.fromkeys(values, f"config {args.config}: ")
    for name in _SPECS:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = tuple(given) if isinstance(given, list) else given
            flag = "--inside-interface" if name == "inside_interfaces" else name
            source[name] = "--" + flag.replace("_", "-") + ": "
    try:
        return Config(**values), args
    except ConfigError as exc:  # a cross-key check: name where the offending key came from
        where = source.get(exc.key or "", "")
        text = str(exc).split(": ", 1)[1] if where.startswith("--") else str(exc)
        raise ConfigError(where + text, exc.key) from None
