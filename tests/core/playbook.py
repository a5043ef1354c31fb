"""Exact-sequence playbooks for the core session (in the spirit of mitmproxy's Playbook).

    pb = Playbook()
    pb >> client(b"NOOP\\r\\n") << [Send(SERVER, b"NOOP\\r\\n")]
    pb.at(60.0) >> TimerFired() << [Send(CLIENT, P.IDLE_TIMEOUT), ...]

`>>` names the event, `<<` runs it through the session (at the time set by `at()`) and
compares the WHOLE action list, in order, with `==`; a mismatch raises with a line diff of
the two lists. Every step is also fed to the shared invariant checker
(tests/core/invariants.py), together with the session's backlog() and next_deadline(), so each
hand-written scenario checks the checker too.
"""

from __future__ import annotations

import difflib
import random

from ftpalg.core.messages import Action, DataReceived, Event, Faces, Side
from ftpalg.core.policy import CorePolicy
from ftpalg.core.ports import RandomSource
from ftpalg.core.session import Session
from tests.core.harness import FACES_V4
from tests.core.invariants import Checker


def client(data: bytes) -> DataReceived:
    return DataReceived(Side.CLIENT, data)


def server(data: bytes) -> DataReceived:
    return DataReceived(Side.SERVER, data)


class Playbook:
    def __init__(
        self,
        faces: Faces = FACES_V4,
        policy: CorePolicy | None = None,
        rng: RandomSource | None = None,
    ) -> None:
        self.policy = policy or CorePolicy()
        self.session = Session(faces, self.policy, 0.0, rng or random.Random(1))
        self.checker = Checker(faces, self.policy)
        self.now = 0.0
        self._event: Event | None = None

    def at(self, now: float) -> Playbook:
        """The time of the following events."""
        self.now = now
        return self

    def __rshift__(self, event: Event) -> Playbook:
        assert self._event is None, f"{self._event!r} has no `<< expected`"
        self._event = event
        return self

    def __lshift__(self, expected: list[Action]) -> Playbook:
        event, self._event = self._event, None
        assert event is not None, "`<< expected` without an event (`>> event`)"
        actual = self.session.handle(event, self.now)
        if actual != expected:
            raise AssertionError(
                f"{event!r} at {self.now}: (-) expected, (+) actual\n{diff(expected, actual)}"
            )
        self.checker.step(event, self.now, actual)
        s = self.session
        self.checker.check_state({side: s.backlog(side) for side in Side}, s.next_deadline())
        return self


def diff(expected: list[Action], actual: list[Action]) -> str:
    """One action per line; `-` only expected, `+` only actual."""
    lines = difflib.ndiff([repr(a) for a in expected], [repr(a) for a in actual])
    return "\n".join(line for line in lines if not line.startswith("?"))
