"""Policy (docs/core.md) and the FTP replies ftpalg itself sends.

- Address mismatch: a PORT/EPRT naming an address other than the client's real one is refused
  with 500 in strict mode (FTP bounce protection, RFC 2577); a 227 naming an address other
  than the server's is taken to mean the server's own control address (what curl and OpenBSD
  ftp-proxy do). `loose` trusts the stated address (kernel `loose=1`).
- Data ports below 1024 in PORT/EPRT are refused with 500 unless allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpalg.core.messages import Endpoint, Faces
from ftpalg.core.observations import Refusal
from ftpalg.core.wire import Address, Kind, Match


@dataclass(frozen=True, slots=True)
class CorePolicy:
    loose: bool = False
    allow_low_data_ports: bool = False
    data_ports: tuple[int, int] = (40000, 60999)
    expect_timeout: float = 300.0
    idle_timeout: float = 900.0
    line_timeout: float = 60.0
    max_line: int = 4096
    port_tries: int = 16
    # reverse mode: every data listener inside `data_ports` (the operator's firewall opens
    # that range), and the address written into 227 replies when a DNAT sits in front
    strict_data_ports: bool = False
    announce: tuple[Address, ...] = ()  # at most one per IP version
    tls: str = "passthrough"  # what AUTH gets: passthrough, refuse, terminate (core/tls.py)
    data_policy: str = "client"  # data-mode conversion (core/convert.py): client = none
    require_tls: bool = False  # terminate: USER/PASS before AUTH refused (tls_terminate.py)
    nat64: bool = True  # RFC 6384 on sessions from an IPv6 client to an IPv4 server (nat64.py)


def reply(code: int, text: str) -> bytes:
    """One FTP reply line (RFC 959 §4.2): code, space, text, CRLF."""
    return f"{code} {text}\r\n".encode("ascii", "backslashreplace")


def malformed_reply(kind: Kind, reason: str) -> bytes:
    return reply(501, f"Syntax error in {kind.value} parameters ({reason}).")


def refusal_for_client(match: Match, client: Address, policy: CorePolicy) -> bytes | None:
    """The 500 reply refusing a client PORT/EPRT, or None when policy lets it through."""
    assert match.address is not None
    if match.address != client and not policy.loose:
        return reply(
            500, f"Illegal {match.kind.value} command: {match.address} is not your address."
        )
    if match.port < 1024 and not policy.allow_low_data_ports:
        return reply(500, f"Illegal {match.kind.value} command: data port {match.port} < 1024.")
    return None


@dataclass(frozen=True, slots=True)
class DataPlan:
    """Where the data connection an address line announces goes (the four faces)."""

    face: Address  # the listener's address: the receiver's view of the sender
    accept_from: Address  # the only peer that may connect to it
    target: Endpoint  # where ftpalg dials once it did
    dial_from: Address  # the face the dialed peer expects to see
    shown: Address  # the address written into the line (`face`, or the announce address)


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal
    reply: bytes


def plan_data(match: Match, faces: Faces, policy: CorePolicy) -> DataPlan | Refused:
    """The plan for a parsed PORT/EPRT (from the client) or 227/229 (from the server): the
    listener goes on the face the receiver sees the sender as, the dial comes from the face
    the far end expects (`nf_nat_ftp`: the sender's address as seen by the receiver)."""
    if match.kind.from_client:
        refusal = refusal_for_client(match, faces.client.host, policy)
        if refusal is not None:
            bounce = match.address != faces.client.host and not policy.loose
            return Refused(Refusal.BOUNCE if bounce else Refusal.LOW_PORT, refusal)
        assert match.address is not None
        target = Endpoint(match.address, match.port)
        face = faces.client_face.host
        return DataPlan(face, faces.server.host, target, faces.server_face.host, face)
    target = Endpoint(server_target(match, faces.server.host, policy), match.port)
    face = faces.server_face.host
    shown = next((a for a in policy.announce if a.version == face.version), face)
    return DataPlan(face, faces.client.host, target, faces.client_face.host, shown)


def server_target(match: Match, server: Address, policy: CorePolicy) -> Address:
    """Where a passive data connection really goes (229 names no address: the server)."""
    if match.address is None or policy.loose:
        return match.address or server
    return server


NO_PORT_FOR_ACTIVE = reply(500, "Illegal PORT command: no free data port on the gateway.")
NO_PORT_FOR_PASSIVE = reply(425, "Can't open data connection: no free port on the gateway.")
UNREPRESENTABLE = reply(500, "Illegal PORT command: use EPRT on this connection.")
IDLE_TIMEOUT = reply(421, "Idle timeout, closing control connection.")
LINE_TIMEOUT = reply(421, "Command line not completed in time, closing control connection.")
OUT_OF_RESOURCES = reply(421, "Service not available: the gateway is out of resources.")
TOO_MANY_SESSIONS = reply(421, "Too many sessions on the gateway, try again later.")
NO_UPSTREAM = reply(421, "Service not available: no FTP server behind this address.")
SHUTTING_DOWN = reply(421, "Service not available: the gateway is shutting down.")


def upstream_failed(reason: str) -> bytes:
    return reply(421, f"Service not available: cannot reach the FTP server ({reason}).")


def framing_error(reason: str) -> bytes:
    return reply(500, f"Command rejected: {reason}; closing control connection.")
