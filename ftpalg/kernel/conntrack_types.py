"""The conntrack data ftpalg sees: tuples, counters, TCP states, decoded events.

How this works: plain frozen dataclasses, shared by the ctnetlink decoder
(``conntrack_wire``), the watcher (``conntrack``), the payload arithmetic
(``conntrack_payload``) and NFLOG (``conntrack_nflog``). Directions are numbered as the
kernel does: 0 = original (the packets of the connection's initiator), 1 = reply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TCP_CLOSE_INIT = 0x04  # IP_CT_TCP_FLAG_CLOSE_INIT: this direction sent the first FIN


class TcpState(enum.IntEnum):
    """``enum tcp_conntrack`` (``include/uapi/linux/netfilter/nf_conntrack_tcp.h``)."""

    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9


# A FIN or RST has passed in *some* direction (``CtEvent.fin_sent`` tells which one).
ENDING_STATES = frozenset(
    {TcpState.FIN_WAIT, TcpState.CLOSE_WAIT, TcpState.LAST_ACK, TcpState.TIME_WAIT, TcpState.CLOSE}
)


class CtKind(enum.Enum):
    """What a decoded message is: an event (by multicast group) or a GET/dump answer."""

    NEW = "new"
    UPDATE = "update"
    DESTROY = "destroy"
    SNAPSHOT = "snapshot"  # an answer to a GET or a dump, not an event


@dataclass(frozen=True, slots=True)
class CtTuple:
    """One direction of a conntrack: ``family`` is 4 or 6, ports are 0 for port-less protocols."""

    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int

    def reversed(self) -> CtTuple:
        return CtTuple(self.family, self.proto, self.dst, self.src, self.dport, self.sport)


@dataclass(frozen=True, slots=True)
class Counters:
    """Conntrack accounting of one direction: IP packets and their bytes *including* headers."""

    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CtEvent:
    """One decoded ctnetlink message. ``None`` fields were not in the message."""

    kind: CtKind
    ct_id: int
    mark: int
    orig: CtTuple
    reply: CtTuple
    tcp_state: TcpState | None = None
    orig_counters: Counters | None = None
    reply_counters: Counters | None = None
    status: int | None = None
    tcp_flags: tuple[int, int] | None = None  # conntrack's per-direction IP_CT_TCP_FLAG_*

    @property
    def ending(self) -> bool:
        """A FIN or RST has passed in *some* direction, or the entry is gone."""
        return self.kind is CtKind.DESTROY or self.tcp_state in ENDING_STATES

    def fin_sent(self, direction: int) -> bool | None:
        """Has the sender of ``direction`` (0 original, 1 reply) sent its FIN (or an RST passed)?

        This is the end of that direction's data. FIN_WAIT/CLOSE_WAIT mean one FIN: its
        sender carries ``CLOSE_INIT`` in ``tcp_flags``. LAST_ACK/TIME_WAIT mean both FINs,
        CLOSE an RST (or both FINs). None when the event carries no TCP state.
        """
        if self.kind is CtKind.DESTROY:
            return True
        if self.tcp_state is None:
            return None
        if self.tcp_state in (TcpState.LAST_ACK, TcpState.TIME_WAIT, TcpState.CLOSE):
            return True
        if self.tcp_state in (TcpState.FIN_WAIT, TcpState.CLOSE_WAIT):
            return self.tcp_flags is not None and bool(self.tcp_flags[direction] & TCP_CLOSE_INIT)
        return False
