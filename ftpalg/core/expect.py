"""Expectations: the data connections a control session has announced (docs/core.md).

How this works. A matched PORT/EPRT/227/229 first becomes a `PendingOpen`: the core asks the
adapter for a listener on the receiver's face and holds the line (and every later line from
the same side, to keep order) until the listener is bound. Once bound, the rewritten line is
forwarded and the `Expectation` is armed:
- one per session: a newer one closes the older listener (kernel max_expected = 1);
- peer-bound: only `accept_from` may connect (any source port); others are closed at once
  and the expectation stays for the right peer;
- single use: the first right peer consumes it and the listener closes;
- it expires at `deadline` (300 s by default), and dies with the control session.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpalg.core.messages import Endpoint, Side
from ftpalg.core.ports import PortChooser
from ftpalg.core.wire import Address, Kind, Match


@dataclass(slots=True)
class PendingOpen:
    listener: int
    side: Side  # who sent the line being held
    offset: int  # stream offset of the line
    line: bytes
    match: Match
    face: Address  # where the listener goes: the receiver's view of the sender
    shown: Address  # the address written into the line (policy.DataPlan.shown)
    accept_from: Address
    target: Endpoint
    dial_from: Address
    chooser: PortChooser  # the ports to try when the first cannot be bound
    render: str | None = None  # NAT64 (core/nat64.py): the line is written anew, not spliced


@dataclass(frozen=True, slots=True)
class Expectation:
    listener: int
    kind: Kind
    listen: Endpoint
    accept_from: Address
    target: Endpoint
    dial_from: Address
    deadline: float
