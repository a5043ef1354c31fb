"""Daemon configuration: defaults < TOML file (``--config``) < command line.

Each value is checked where it enters, so an error names its source and key in one line:
``config conf/x.toml: data_ports: 70000 is not a port (1-65535)`` or
``--idle-timeout: -1 must be > 0``. A bad value in the file is an error even when a flag
overrides it. Cross-key checks (low data ports) run after merging and name the source of the
offending key. ``Config.__post_init__`` re-checks every invariant, so code that builds a
``Config`` directly (tests, the lab) cannot make one the daemon would refuse.
"""

from __future__ import annotations

import argparse
import difflib
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, Literal, NoReturn

from ftpalg import __version__
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
    "build_parser",
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


class _Parser(argparse.ArgumentParser):
    """Raise ``ConfigError`` instead of printing usage and exiting (``--help`` still exits)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.removeprefix("argument "))


def _arg(conv: Callable[[str], Any], check: Callable[[Any], Any] = lambda v: v) -> Any:
    def parse(text: str) -> Any:
        try:
            return check(conv(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _int(text: str) -> int:
    """A whole number, decimal or hex (`0x10`, as marks are usually written)."""
    if not re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]+", text):
        raise ValueError(f"{text!r} is not a whole number")
    return int(text, 0) if text[:2].lower() == "0x" else int(text)


_SECONDS_FLAGS = {  # flag: (help, default)
    "expect_timeout": ("lifetime of an announced data endpoint", 300),
    "idle_timeout": ("close a control session idle this long", 900),
    "line_timeout": ("close a session whose command line stays incomplete this long", 60),
    "connect_timeout": ("give up connecting to a server or client after this", 10),
    "grace_period": ("on SIGTERM, let running sessions finish for this long (0: none)", 30),
}
_INT_FLAGS = {  # flag: (metavar, help)
    "max_sessions": ("N", "refuse control connections beyond N at once with 421 (default 1000)"),
    "max_line": ("BYTES", f"longest control line, {MIN_LINE}-{MAX_LINE} (default 4096)"),
    "tproxy_mark": ("N", "firewall mark used for TPROXY policy routing (default 1)"),
    "route_table": ("N", "routing table holding the TPROXY local routes (default 100)"),
}
_OPS_FLAGS = {  # flag: (metavar, parser, help)
    "metrics": (
        "HOST:PORT",
        parse_endpoint,
        "serve Prometheus metrics on http://HOST:PORT/metrics (default: off)",
    ),
    "xferlog": (
        "FILE",
        check_path,
        "append one xferlog-format line per data transfer (default: off)",
    ),
    "user": (
        "NAME",
        check_user,
        "after the root-only set-up, run as this user with only "
        "CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (default: stay as started)",
    ),
}
_SWITCHES = {  # flag: (dest, value, help)
    "--loose": ("loose", True, "trust a third-party address in PORT/EPRT/227 (kernel loose=1)"),
    "--strict": (
        "loose",
        False,
        "PORT/EPRT must name the client (else 500), a 227 is taken to "
        "mean the server itself; the default, overrides loose = true in the file",
    ),
    "--allow-low-data-ports": (
        "allow_low_data_ports",
        True,
        "accept data ports below 1024 in PORT/EPRT and --data-ports",
    ),
    "--source-transparent": (
        "source_transparent",
        True,
        "connect to the server from the client's own address",
    ),
    "--require-tls": (
        "require_tls",
        True,
        "tls terminate: refuse USER and PASS before AUTH TLS with 530 (no password in clear)",
    ),
    "--tls-upstream": (
        "tls_upstream",
        True,
        "tls terminate: speak explicit FTPS (AUTH TLS, PBSZ 0, PROT P) to the server too, its "
        "data connections resuming the control connection's TLS session",
    ),
    "--no-kernel-setup": (
        "kernel_setup",
        False,
        "do not install TPROXY routes and the nftables table (the operator manages them)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The daemon's flags. ``ftpalg lab ...`` is dispatched by ``cli.py`` before this."""
    p = _Parser(
        prog="ftpalg",
        allow_abbrev=False,  # an operator's script must spell flags out
        description="Transparent FTP application layer gateway for Linux NAT gateways. "
        "Settings come from defaults, then --config FILE, then these flags.",
        epilog="other commands: 'ftpalg lab' builds a network-namespace lab and carries real "
        "FTP through ftpalg (ftpalg lab --help); 'ftpalg cleanup' removes what a killed "
        "ftpalg left in the kernel (its nftables table and routing rules).",
    )
    add = p.add_argument
    add("--version", action="version", version=f"ftpalg {__version__}", help="print it, exit")
    add("--config", metavar="FILE", help="TOML file; keys are the long option names with _")
    add(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        type=_arg(parse_endpoint),
        help="accept control connections here; repeatable, IPv6 as [::]:21; "
        "replaces the config file's list (default 0.0.0.0:21)",
    )
    add(
        "--listen-implicit",
        dest="listen_implicit",
        metavar="HOST:PORT",
        action="append",
        type=_arg(parse_endpoint),
        help="tls terminate: accept implicit FTPS here (TLS from the first byte, usually "
        "port 990); repeatable (default: none)",
    )
    add(
        "--upstream",
        metavar="HOST:PORT",
        type=_arg(lambda s: parse_host_port(s, FTP_PORT)),
        help="reverse mode: relay every session to this server (port defaults to 21); "
        "without it, each connection goes to its original destination (transparent mode)",
    )
    add(
        "--data-ports",
        metavar="LO-HI",
        type=_arg(parse_port_range),
        help="ports for data listeners (default 40000-60999): transparent mode uses them "
        "when the announced port is taken, reverse mode always",
    )
    add(
        "--announce-address",
        metavar="ADDR",
        action="append",
        type=_arg(parse_announce),
        help="reverse mode behind DNAT: the address written into 227 replies (one per IP "
        "version; default: the address the client connected to)",
    )
    add(
        "--inside-interface",
        dest="inside_interfaces",
        metavar="IFNAME",
        action="append",
        type=_arg(check_ifname),
        help="divert FTP arriving on this interface only; repeatable (default: all)",
    )
    add(
        "--data-policy",
        dest="data_policy",
        choices=DATA_POLICIES,
        help="data-mode conversion (docs/conversion.md): client (default: the server sees the "
        "client's own PORT/EPRT/PASV/EPSV), passive (ftpalg uses EPSV upstream, PASV if the "
        "server refuses it), active (EPRT upstream, PORT if refused), or exactly PASV, EPSV, "
        "PORT or EPRT upstream; ftpalg answers the client's own command itself",
    )
    add(
        "--nat64-prefix",
        dest="nat64_prefix",
        metavar="PREFIX",
        type=_arg(parse_prefix),
        help="transparent mode: IPv6 control connections to an address in this NAT64 prefix "
        "(RFC 6052; e.g. 64:ff9b::/96) go to the embedded IPv4 server, translated per RFC 6384 "
        "(docs/nat64.md; default: off)",
    )
    add(
        "--data-plane",
        choices=DATA_PLANES,
        help="who carries data connections: auto (default: the kernel where it can, else "
        "the relay), kernel (nftables pinholes; needs the kernel set-up), relay (ftpalg)",
    )
    add(
        "--tls",
        choices=TLS_MODES,
        help="what an FTPS client's AUTH gets: passthrough (forwarded; after the server's 234 "
        "the session is relayed unread), refuse (534), or auto (default: passthrough in "
        "transparent mode, refuse in reverse mode), terminate (reverse mode: ftpalg is the TLS "
        "server for clients, the server sees plain FTP; needs --tls-cert and --tls-key)",
    )
    add(
        "--tls-cert",
        dest="tls_cert",
        metavar="FILE",
        type=_arg(check_path),
        help="tls terminate: certificate chain, PEM (re-read on SIGHUP)",
    )
    add(
        "--tls-key",
        dest="tls_key",
        metavar="FILE",
        type=_arg(check_path),
        help="tls terminate: private key, PEM (re-read on SIGHUP)",
    )
    add(
        "--tls-ciphers",
        dest="tls_ciphers",
        metavar="STRING",
        type=_arg(check_tls_ciphers),
        help="tls terminate: OpenSSL cipher string for TLS 1.2 (default: ECDHE/DHE with "
        "AES-GCM or ChaCha20-Poly1305); TLS 1.3 keeps OpenSSL's suites",
    )
    add(
        "--tls-min-version",
        dest="tls_min_version",
        metavar="1.2|1.3",
        type=_arg(check_tls_version),
        help="tls terminate: lowest TLS version offered to clients, 1.2 (default) or 1.3",
    )
    add("--log-format", choices=LOG_FORMATS, help="json for machines (default), console for people")
    add("--log-level", choices=LOG_LEVELS, help="lowest level logged (default info)")
    for name, (metavar, conv, help_) in _OPS_FLAGS.items():
        add("--" + name, metavar=metavar, type=_arg(conv), help=help_)
    add(
        "--check-config",
        action="store_true",
        help="check the configuration (file and "
        "flags), print one line, exit 0 (valid) or 2 (invalid)",
    )
    for name, (text, default) in _SECONDS_FLAGS.items():
        check = _SPECS[name].check
        help_ = f"{text}, in seconds (default {default})"
        add("--" + name.replace("_", "-"), metavar="S", type=_arg(_float, check), help=help_)
    for name, (metavar, help_) in _INT_FLAGS.items():
        check = _SPECS[name].check
        add("--" + name.replace("_", "-"), metavar=metavar, type=_arg(_int, check), help=help_)
    mode = p.add_mutually_exclusive_group()
    for flag, (dest, value, help_) in _SWITCHES.items():
        group = mode if dest == "loose" else p
        group.add_argument(flag, dest=dest, action="store_const", const=value, help=help_)
    return p


def build_config(argv: Sequence[str]) -> tuple[Config, argparse.Namespace]:
    """Parse daemon flags into a ``Config``. Errors raise ``ConfigError`` (one line);
    ``--help`` and ``--version`` print and raise ``SystemExit(0)`` as argparse does."""
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
