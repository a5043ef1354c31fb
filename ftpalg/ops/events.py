"""The service's own observations: sessions opened and refused, failures, reloads.

They share the `Observation` base with the core's (ftpalg/core/observations.py), so the
observer, the metrics and the tests treat both alike.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ftpalg.core.messages import Endpoint
from ftpalg.core.observations import Observation, Refusal


class Fault(enum.Enum):
    """Failures counted by the errors metric; the value is the log event."""

    INTERNAL = "internal_error"
    ACCEPT = "accept_failed"
    ACCEPT_PAUSED = "accept_paused"
    DATA_ACCEPT = "data_accept_failed"
    OBSERVER = "observer_failed"
    XFERLOG_OPEN = "xferlog_open_failed"
    XFERLOG_WRITE = "xferlog_write_failed"
    RELAY_WORKER = "relay_worker_failed"


@dataclass(frozen=True, slots=True)
class SessionOpened(Observation):
    EVENT = "session_opened"
    server: Endpoint
    server_face: Endpoint
    client_face: Endpoint
    mode: str  # "transparent" or "reverse"
    connect_ms: float
    nat64: bool = False  # an IPv6 client with an IPv4 server: translated (docs/nat64.md)


@dataclass(frozen=True, slots=True)
class SessionRefused(Observation):
    """A control connection answered with `reply` and closed before a session started."""

    EVENT, LEVEL = "session_refused", "warning"
    kind: Refusal
    reply: bytes
    client: Endpoint | None
    detail: str | None = None  # why, when the reply does not say it

    def fields(self) -> dict[str, Any]:
        reason = self.detail or self.reply.decode("ascii", "replace").strip()
        out: dict[str, Any] = {"reason": reason}
        if self.client is not None:
            out["client"] = str(self.client)
        return out


@dataclass(frozen=True, slots=True)
class UpstreamConnectFailed(Observation):
    EVENT, LEVEL = "upstream_connect_failed", "warning"
    upstream: Endpoint
    error: str


@dataclass(frozen=True, slots=True)
class Failed(Observation):
    """Something went wrong that is not a peer's fault: counted by `what`."""

    what: Fault
    error: str

    @property
    def event(self) -> str:
        return self.what.value

    @property
    def level(self) -> str:
        return "warning" if self.what is Fault.DATA_ACCEPT else "error"

    def fields(self) -> dict[str, Any]:
        return {"error": self.error}


@dataclass(frozen=True, slots=True)
class Reloaded(Observation):
    """SIGHUP: the configuration was re-read (`ok`) or kept (`error`)."""

    ok: bool
    changed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    error: str | None = None

    @property
    def event(self) -> str:
        return "reloaded" if self.ok else "reload_failed"

    @property
    def level(self) -> str:
        return "info" if self.ok else "error"

    def fields(self) -> dict[str, Any]:
        if not self.ok:
            return {"error": self.error}
        return {"changed": list(self.changed), "needs_restart": list(self.needs_restart)}


@dataclass(frozen=True, slots=True)
class KernelState(Observation):
    """ftpalg's kernel state (its table, its policy routing): installed at start, found
    missing (`nft flush ruleset`, a deleted rule), or put back (proxy/kernel_guard.py)."""

    present: bool
    restored: bool = False
    pinholes: int = 0  # open expectations' pinholes put back with it

    @property
    def event(self) -> str:
        if not self.present:
            return "kernel_state_missing"
        return "kernel_state_restored" if self.restored else "kernel_state_installed"

    @property
    def level(self) -> str:
        return "info" if self.present else "warning"

    def fields(self) -> dict[str, Any]:
        if not self.present:
            return {"action": "reinstalling"}
        return {"pinholes": self.pinholes} if self.restored else {}
