"""Parse and check single config values: ``HOST:PORT``, ``[IPv6]:PORT``, ``LO-HI``, numbers.

Parsers raise ``ValueError`` with a one-line message that quotes the input but not the option
name; ``ftpalg.ops.config`` adds the option name and source. IPv6 literals need brackets, always:
``::1:21`` is itself a valid IPv6 address, so guessing where the port starts would be wrong.
"""

from __future__ import annotations

import functools
import math
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from ftpalg.core.messages import Endpoint as Endpoint

_PORT_RE = re.compile(r"[0-9]{1,5}")  # ASCII digits only: int() would accept "٢١" and " 21"
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # RFC 1123 §2.1 host name label


@dataclass(frozen=True, slots=True)
class HostPort:
    """A remote server: ``host`` is a lower-case DNS name or a normalised IP literal."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port (1-65535)")
    return value


def parse_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        shown = text if text.isascii() and text.isdigit() else repr(text)
        raise ValueError(f"{shown} is not a port (1-65535)")
    return int(text)


def parse_host_port(text: str, default_port: int | None = None) -> HostPort:
    """``host:port`` or ``[v6]:port``; the port may be left out only with ``default_port``."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
        try:
            host = str(IPv6Address(host))
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:21")
    else:
        host, sep, after = text.partition(":")
        port_text = after if sep else None
        host = _check_host(host, text)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        return HostPort(host, check_port(default_port))
    return HostPort(host, parse_port(port_text))


def _check_host(host: str, text: str) -> str:
    try:
        return str(ip_address(host))
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    # RFC 1123 §2.1: a name's last label is not all-numeric, so "1.2.3.256" is no name.
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(x) for x in labels) or labels[-1].isdigit():
        raise ValueError(f"{text!r}: {host!r} is not an IP address or host name")
    return host.lower()


def parse_endpoint(text: str) -> Endpoint:
    """A listen address: ``0.0.0.0:21``, ``[::]:21``, ``[fe80::1%eth0]:21``. No names."""
    hp = parse_host_port(text)
    try:
        return Endpoint(ip_address(hp.host), hp.port)
    except ValueError:
        raise ValueError(f"{text!r}: listen on an IP address, not a name") from None


def check_port_range(value: tuple[int, int]) -> tuple[int, int]:
    lo, hi = check_port(value[0]), check_port(value[1])
    if lo > hi:
        raise ValueError(f"{lo}-{hi}: low port is above high port")
    return value


def parse_port_range(text: str) -> tuple[int, int]:
    """``LO-HI`` (inclusive), e.g. ``40000-60999``; one port is ``40000-40000``."""
    lo, sep, hi = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r}: expected LOW-HIGH, e.g. 40000-60999")
    return check_port_range((parse_port(lo.strip()), parse_port(hi.strip())))


# --- checks for one config value: ValueError (bad value) or TypeError (wrong TOML type) ------


def seconds(zero_ok: bool) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        if value < 0 or (value == 0 and not zero_ok):
            raise ValueError(f"{value:g} must be {'>=' if zero_ok else '>'} 0")
        return float(value)

    return check


def int_range(lo: int, hi: int, reserved: frozenset[int] = frozenset()) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not lo <= value <= hi or value in reserved:
            extra = f", not {', '.join(map(str, sorted(reserved)))}" if reserved else ""
            raise ValueError(f"{value} is out of range ({lo}-{hi}{extra})")
        return value

    return check


def choice(options: Sequence[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return value

    return check


def check_ifname(name: str) -> str:
    # Linux dev_valid_name(): 1-15 bytes, not "." or "..", no "/", ":" or whitespace.
    if not 0 < len(name.encode()) < 16 or name in {".", ".."} or re.search(r"[/:\s]", name):
        raise ValueError(f"{name!r} is not a valid interface name")
    return name


def unique(items: tuple[Any, ...], empty_ok: bool = True) -> tuple[Any, ...]:
    if not items and not empty_ok:
        raise ValueError("at least one is needed")
    dupes = sorted({str(x) for x in items if items.count(x) > 1})
    if dupes:
        raise ValueError(f"{', '.join(dupes)} given more than once")
    return items


def typed(kind: str, *types: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:  # bool is an int in Python, not in TOML
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise TypeError(kind)
        return value

    return convert


def strings(conv: Callable[[str], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def convert(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError("a list of strings")
        return tuple(conv(v) for v in value)

    return convert


def toml_port_range(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        return parse_port_range(value)
    if not isinstance(value, list) or len(value) != 2 or any(type(v) is not int for v in value):
        raise TypeError('"LOW-HIGH" or [LOW, HIGH]')
    return check_port_range((value[0], value[1]))


def str_then(check: Callable[[str], Any]) -> Callable[[Any], Any]:
    return lambda value: check(typed("a string", str)(value))


_USER_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")


def check_path(path: str) -> str:
    if not path or "\0" in path:
        raise ValueError(f"{path!r} is not a file name")
    return path


def check_user(name: str) -> str:
    if not _USER_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a user name")
    return name


TLS_VERSIONS = ("1.2", "1.3")
TLS_NEVER = ":!aNULL:!eNULL"  # appended to every tls_ciphers: never unauthenticated or plain
# the default tls_ciphers: forward-secret AEAD suites only
DEFAULT_TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!MD5:!DSS"


@functools.lru_cache(maxsize=16)  # a Config checks it whenever one is made
def check_tls_ciphers(text: str) -> str:
    """An OpenSSL cipher string that selects at least one TLS 1.2 suite (checked by OpenSSL
    itself; TLS 1.3 suites are not set by it)."""
    if not text.isprintable() or not text.strip():
        raise ValueError(f"{text!r} is not an OpenSSL cipher string")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text + TLS_NEVER)
    except ssl.SSLError:
        msg = "OpenSSL selects no TLS 1.2 cipher suite from it (e.g. 'ECDHE+AESGCM')"
        raise ValueError(f"{text!r}: {msg}") from None
    return text


def check_tls_version(value: str) -> str:
    if value not in TLS_VERSIONS:
        msg = "is not 1.2 or 1.3 (older TLS versions are never offered)"
        raise ValueError(f"{value!r} {msg}")
    return value


def toml_tls_version(value: Any) -> str:
    """`"1.3"`, or the TOML number 1.3 written without quotes."""
    if isinstance(value, float):
        return check_tls_version(repr(value))
    return check_tls_version(typed("a string", str)(value))


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def parse_announce(text: str) -> IPv4Address | IPv6Address:
    """An address to write into passive replies: a specific IP literal (no host names)."""
    try:
        addr = ip_address(text.strip("[]"))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if addr.is_unspecified or addr.is_multicast:
        raise ValueError(f"{text} cannot be announced to clients")
    return addr


def check_announce(
    addrs: tuple[IPv4Address | IPv6Address, ...],
) -> tuple[IPv4Address | IPv6Address, ...]:
    """At most one announce address per IP version."""
    versions = [a.version for a in addrs]
    if len(set(versions)) != len(versions):
        raise ValueError("at most one address per IP version")
    return tuple(parse_announce(str(a)) for a in addrs)
