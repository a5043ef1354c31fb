"""The daemon's command line: every flag, its help and its parser (ops/config.py turns the
parsed flags and the TOML file into a `Config`).

How this works. Flags default to None so that `build_config` can tell a flag that was given
from one that was not (a given flag overrides the file's key); values are checked as they
are parsed, so an error names the flag. `_Parser` raises `ConfigError` (one line) instead of
printing usage and exiting.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, NoReturn

from ftpalg import __version__
from ftpalg.core.rfc6052 import parse_prefix
from ftpalg.ops.config import (
    _SPECS,
    DATA_PLANES,
    DATA_POLICIES,
    FTP_PORT,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_LINE,
    MIN_LINE,
    TLS_MODES,
    ConfigError,
)
from ftpalg.ops.values import (
    check_ifname,
    check_path,
    check_tls_ciphers,
    check_tls_version,
    check_user,
    parse_announce,
    parse_endpoint,
    parse_host_port,
    parse_port_range,
)


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
