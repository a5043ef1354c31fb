"""Events (inputs, past tense) and actions (outputs, imperative) of a control session.

The adapter feeds events to `Session.handle()` and carries out the returned actions in order.
Identifiers: listener ids are chosen by the core; data connection ids by the adapter.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from ftpalg.core.wire import Address

if TYPE_CHECKING:
    from ftpalg.core.observations import Observation


class Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    # identity hash, in C (Enum's own hashes the name in Python): sides key the per-side
    # dicts that every control line goes through
    __hash__ = object.__hash__

    @property
    def other(self) -> Side:
        return Side.SERVER if self is Side.CLIENT else Side.CLIENT


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: Address
    port: int

    def __str__(self) -> str:
        host = str(self.host)  # not an f-string: the address's __format__ is Python code
        return f"[{host}]:{self.port}" if self.host.version == 6 else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Faces:
    """The four endpoints of a control session (docs/core.md)."""

    client: Endpoint  # the client's real address
    server: Endpoint  # the real upstream server
    server_face: Endpoint  # what the client believes it talks to
    client_face: Endpoint  # what the server sees the client as


# ---- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataReceived:
    side: Side
    data: bytes  # b"" means EOF


@dataclass(frozen=True, slots=True)
class ListenerOpened:
    listener: int
    port: int


@dataclass(frozen=True, slots=True)
class ListenerFailed:
    listener: int
    error: str


@dataclass(frozen=True, slots=True)
class DataAccepted:
    listener: int
    conn: int
    peer: Endpoint


@dataclass(frozen=True, slots=True)
class DataConnected:
    """The dial for `conn` succeeded; the relay runs."""

    conn: int


@dataclass(frozen=True, slots=True)
class DataFinished:
    conn: int
    accepted_to_dialed: int
    dialed_to_accepted: int
    seconds: float
    error: str | None = None
    estimated: bool = False  # a count is an estimate (kernel plane: docs/data-plane.md)


@dataclass(frozen=True, slots=True)
class DataDialed:
    """A `DialData` succeeded: the connection is `conn`, held until joined or rejected."""

    dial: int
    conn: int


@dataclass(frozen=True, slots=True)
class DialFailed:
    dial: int
    error: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    pass


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """End the session from outside (shutdown, a peer gone): `reply` to the client first."""

    reason: str
    reply: bytes | None = None


Event = (
    DataReceived
    | ListenerOpened
    | ListenerFailed
    | DataAccepted
    | DataConnected
    | DataFinished
    | DataDialed
    | DialFailed
    | TimerFired
    | CloseRequested
)


# ---- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    side: Side
    data: bytes


@dataclass(frozen=True, slots=True)
class ShutdownWrite:
    side: Side


@dataclass(frozen=True, slots=True)
class CloseSession:
    reason: str


@dataclass(frozen=True, slots=True)
class OpenListener:
    """Open the announced data endpoint `host`:`port` (`listener` names it) for one
    connection from `peer`, to be joined to `target` from the address `source`. The relay
    learns the last two again in `ConnectData`; the kernel data plane needs them now."""

    listener: int
    host: Address
    port: int
    peer: Address
    target: Endpoint
    source: Address


@dataclass(frozen=True, slots=True)
class CloseListener:
    listener: int


@dataclass(frozen=True, slots=True)
class RejectData:
    conn: int


@dataclass(frozen=True, slots=True)
class ConnectData:
    """Dial `target` from `source` (port 0 = any), then relay it with accepted conn `conn`."""

    conn: int
    target: Endpoint
    source: Endpoint


@dataclass(frozen=True, slots=True)
class OpenWindow:
    """A TLS session's data can no longer be seen (core/tls.py): let new connections from
    `peer` to `face` on unprivileged ports through for the rest of the session, with the
    source address `source` (what the server sees the client as)."""

    peer: Address
    face: Address
    source: Address


@dataclass(frozen=True, slots=True)
class StartTls:
    """tls = terminate (core/tls_terminate.py): the 234 was sent; what `side` sends from here
    on is TLS, with ftpalg as the TLS server."""

    side: Side


@dataclass(frozen=True, slots=True)
class ProtectData:
    """tls = terminate: the client's PROT — data connections from now on are TLS (`private`)
    or plain on the client's side (the server's side is always plain)."""

    private: bool


@dataclass(frozen=True, slots=True)
class DialData:
    """Data-mode conversion (core/convert.py): dial `target` from `source` (port 0 = any)
    and hold the connection (`DataDialed` names it) — a dial no accept triggered."""

    dial: int
    target: Endpoint
    source: Endpoint


@dataclass(frozen=True, slots=True)
class JoinData:
    """Relay the held connections `client` and `server` (each accepted or dialed); when it
    ends, `DataFinished(client, client-to-server bytes, server-to-client bytes, ...)`."""

    client: int
    server: int


# A string: observations.py imports this module (Endpoint, Side).
Action: TypeAlias = (
    "Send | ShutdownWrite | CloseSession | OpenListener | CloseListener | RejectData"
    " | ConnectData | DialData | JoinData | OpenWindow | StartTls | ProtectData | Observation"
)
