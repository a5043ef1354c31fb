"""Typed observations: what happened, as data, for logs, metrics, the xferlog and tests.

How this works. The core reports everything worth knowing as an `Observation` action in its
output list (logging is an output, so tests assert it like any other action); the adapter
reports its own (sessions opened and refused, failures) with the same types. Consumers match
on the type and read typed fields: metrics and the xferlog never look at log text or reply
text. A log line is one rendering of an observation: `event` is its name, `level` its
severity and `fields()` its key/value pairs (endpoints and enums as text, bytes escaped by
the log renderer). Renaming a log event cannot silently break a metric, because nothing
looks the event up by name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar

from ftpalg.core.messages import Endpoint, Side
from ftpalg.core.wire import Kind


class Observation:
    """Base of every observation; subclasses are frozen slotted dataclasses."""

    __slots__ = ()
    EVENT: ClassVar[str]
    LEVEL: ClassVar[str] = "info"
    HIDDEN: ClassVar[frozenset[str]] = frozenset()  # carried for consumers, not logged

    @property
    def event(self) -> str:
        return self.EVENT

    @property
    def level(self) -> str:
        return self.LEVEL

    def fields(self) -> dict[str, Any]:
        names = _LOGGED.get(type(self))
        if names is None:
            every = dataclass_fields(self)  # type: ignore[arg-type]  # subclasses are dataclasses
            names = _LOGGED[type(self)] = tuple(f.name for f in every if f.name not in self.HIDDEN)
        return {name: _render(getattr(self, name)) for name in names}


_LOGGED: dict[type[Observation], tuple[str, ...]] = {}  # the logged field names, per class


def _render(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Endpoint):
        return str(value)
    return value


class DataMode(enum.Enum):
    ACTIVE = "active"  # PORT/EPRT: the server connects, ftpalg dials the client
    PASSIVE = "passive"  # 227/229: the client connects, ftpalg dials the server

    @classmethod
    def of(cls, kind: Kind) -> DataMode:
        return cls.ACTIVE if kind.from_client else cls.PASSIVE


class Refusal(enum.Enum):
    """Why something was refused: the `reason` label of the refusals counter."""

    BOUNCE = "bounce"
    LOW_PORT = "low_port"
    MALFORMED = "malformed"
    MISMATCH = "mismatch"
    THEFT = "theft"
    STALE = "stale"
    NO_DATA_PORT = "no_data_port"
    UNREPRESENTABLE = "unrepresentable"
    LIMITS = "limits"  # session limit, shutting down, out of descriptors
    NO_UPSTREAM = "no_upstream"
    UPSTREAM = "upstream"


class ExpectationOutcome(enum.Enum):
    USED = "used"
    EXPIRED = "expired"
    REPLACED = "replaced"
    DROPPED = "dropped"  # the session ended first


@dataclass(frozen=True, slots=True)
class Rewritten(Observation):
    """An address line forwarded with its address/port span rewritten; an expectation is
    armed on `listen`."""

    EVENT = "rewrite"
    kind: Kind
    before: bytes
    after: bytes
    listen: Endpoint
    target: Endpoint
    delta: int
    seq_offset: int  # the kernel's cumulative seq correction of that direction after it

    @property
    def event(self) -> str:
        """A line the faces left as it was (a transparent-mode 227 naming the server's own
        address, every 229) armed an expectation but was not rewritten: it says so."""
        return "rewrite" if self.before != self.after else "announce_unchanged"


@dataclass(frozen=True, slots=True)
class CommandRefused(Observation):
    """A client PORT/EPRT refused by policy (bounce, low port) with `reply`."""

    EVENT, LEVEL = "command_refused", "warning"
    reason: Refusal
    line: bytes
    reply: bytes


@dataclass(frozen=True, slots=True)
class MalformedCommandRefused(Observation):
    EVENT, LEVEL = "malformed_command_refused", "warning"
    kind: Kind
    reason: str
    line: bytes


@dataclass(frozen=True, slots=True)
class MalformedReplyForwarded(Observation):
    EVENT, LEVEL = "malformed_reply_forwarded", "warning"
    kind: Kind
    reason: str
    line: bytes


@dataclass(frozen=True, slots=True)
class ReplyAddressMismatch(Observation):
    """A 227 naming another address than the server's; `using` is where data goes."""

    EVENT, LEVEL = "reply_address_mismatch", "warning"
    line: bytes
    using: str


@dataclass(frozen=True, slots=True)
class RewriteImpossible(Observation):
    EVENT, LEVEL = "rewrite_impossible", "warning"
    line: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class NoDataPort(Observation):
    EVENT, LEVEL = "no_data_port", "warning"
    line: bytes
    error: str


@dataclass(frozen=True, slots=True)
class UnterminatedAddressLineDropped(Observation):
    EVENT, LEVEL = "unterminated_address_line_dropped", "warning"
    side: Side
    line: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation(Observation):
    EVENT, LEVEL = "protocol_violation", "warning"
    side: Side
    reason: str


@dataclass(frozen=True, slots=True)
class ExpectationEnded(Observation):
    """An armed expectation ended without (`expired`, `replaced`, `dropped`) or by (`used`)
    a data connection; `used` and `dropped` are already told by `data_accepted` and
    `session_closed`, so they log at debug level."""

    outcome: ExpectationOutcome
    listen: Endpoint

    @property
    def event(self) -> str:
        return f"expectation_{self.outcome.value}"

    @property
    def level(self) -> str:
        quiet = (ExpectationOutcome.USED, ExpectationOutcome.DROPPED)
        return "debug" if self.outcome in quiet else "info"

    def fields(self) -> dict[str, Any]:
        return {"listen": str(self.listen)}


@dataclass(frozen=True, slots=True)
class DataRejected(Observation):
    """A data connection closed at once: from the wrong peer (`theft`) or for no live
    expectation (`stale`)."""

    reason: Refusal
    peer: Endpoint
    expected: str | None = None
    listen: str | None = None

    @property
    def event(self) -> str:
        return "data_theft_refused" if self.reason is Refusal.THEFT else "data_rejected"

    LEVEL = "warning"


@dataclass(frozen=True, slots=True)
class DataStarted(Observation):
    """The expected peer connected; ftpalg dials `target`."""

    EVENT = "data_accepted"
    conn: int
    peer: Endpoint
    target: Endpoint
    mode: DataMode


@dataclass(frozen=True, slots=True)
class DataEnded(Observation):
    """A data connection ended; what the control channel said it carried (xferlog) and the
    final reply to its transfer command (core/transfer.py): `result` is the data
    connection's error, else that reply when it is not 2xx, else "ok"."""

    EVENT = "data_finished"
    HIDDEN = frozenset({"client"})
    conn: int
    mode: DataMode
    bytes_to_client: int
    bytes_to_server: int
    seconds: float
    result: str  # "ok" or the error
    user: bytes | None
    command: str | None
    path: bytes | None
    type: str
    client: Endpoint
    reply: bytes | None = None  # the transfer command's final reply (None: none came)
    estimated: bool = False  # a byte count is the kernel plane's bounded estimate

    def fields(self) -> dict[str, Any]:
        out = Observation.fields(self)
        if not self.estimated:  # logged only when true: counts are exact otherwise
            del out["estimated"]
        return out

    @property
    def level(self) -> str:
        return "info" if self.ok else "warning"

    @property
    def ok(self) -> bool:
        return self.result == "ok"


@dataclass(frozen=True, slots=True)
class LoginFailed(Observation):
    """The server answered USER/PASS/ACCT with 530, or PASS with another 5xx."""

    EVENT = "login_failed"
    command: str  # USER, PASS or ACCT (never its argument)
    user: bytes | None
    reply: bytes


@dataclass(frozen=True, slots=True)
class TlsPassthrough(Observation):
    """The server accepted the client's AUTH (234): the session is TLS from here on, passed
    through unread (core/tls.py)."""

    EVENT = "tls_passthrough"
    command: bytes


@dataclass(frozen=True, slots=True)
class TlsRefused(Observation):
    """AUTH answered with 534 by ftpalg (tls = refuse), never forwarded."""

    EVENT, LEVEL = "tls_refused", "warning"
    command: bytes


@dataclass(frozen=True, slots=True)
class TlsTerminated(Observation):
    """AUTH answered with 234 by ftpalg itself (tls = terminate): the client's side of the
    control connection becomes TLS; the server never sees AUTH (core/tls_terminate.py)."""

    EVENT = "tls_terminate"
    command: bytes


@dataclass(frozen=True, slots=True)
class Converted(Observation):
    """One transfer whose data mode ftpalg converted (core/convert.py): what the client
    used, what went upstream."""

    EVENT = "converted"
    command: str
    client_kind: str
    upstream_kind: str


@dataclass(frozen=True, slots=True)
class Translated64(Observation):
    """RFC 6384 (core/nat64.py): ftpalg sent `upstream` in place of the client's `client`
    command, because the IPv4 server refused it or was known to."""

    EVENT = "nat64_translated"
    client: str
    upstream: str


@dataclass(frozen=True, slots=True)
class SessionClosed(Observation):
    EVENT = "session_closed"
    reason: str
