"""Generated runs of data-mode conversion (core/convert.py) under every converting policy:
whatever the order of lines, replies, binds, dials, accepts, finishes and timers, the core
never fails, never joins a connection twice or one it does not hold, and when the session
ends nothing is left listening and every held connection was joined or closed. (The shared
invariant checker models a rewriting gateway only; tests/core/test_convert.py says why.)"""

from __future__ import annotations

import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpalg.core.messages import (
    CloseListener,
    CloseRequested,
    ConnectData,
    DataAccepted,
    DataDialed,
    DataFinished,
    DialData,
    DialFailed,
    Event,
    JoinData,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    RejectData,
    TimerFired,
)
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Session
from tests.core.harness import FACES_V4, ep
from tests.core.playbook import client, server

CLIENT_LINES = [
    b"PORT 172,20,9,84,156,64\r\n",
    b"EPRT |1|172.20.9.84|40001|\r\n",
    b"PASV\r\n",
    b"EPSV\r\n",
    b"RETR f\r\n",
    b"STOR g\r\n",
    b"ABOR\r\n",
    b"NOOP\r\n",
    b"REST 5\r\n",
]
SERVER_LINES = [
    b"200 ok\r\n",
    b"229 Entering Extended Passive Mode (|||50000|).\r\n",
    b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n",
    b"500 no\r\n",
    b"150 here\r\n",
    b"226 done\r\n",
    b"425 no data\r\n",
    b"229-multi\r\n",
    b"350 rest\r\n",
]
PEERS = [ep("172.20.9.84:1"), ep("172.20.9.80:20"), ep("192.0.2.9:1")]
OPS = st.one_of(
    st.tuples(st.just("client"), st.sampled_from(CLIENT_LINES)),
    st.tuples(st.just("server"), st.sampled_from(SERVER_LINES)),
    st.tuples(st.just("dial"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("accept"), st.integers(0, 3), st.integers(0, 2)),
    st.tuples(st.just("finish"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("tick"), st.sampled_from([1.0, 100.0, 400.0]), st.booleans()),
)


class Run:
    def __init__(self, mode: str, bind_fails: list[bool]) -> None:
        policy = CorePolicy(data_policy=mode, data_ports=(45000, 45009), port_tries=2)
        self.session = Session(FACES_V4, policy, 0.0, random.Random(1))
        self.now = 0.0
        self.binds = deque(bind_fails)
        self.listening: set[int] = set()
        self.dials: list[int] = []
        self.held: set[int] = set()
        self.joined: list[int] = []
        self.conns = 100

    def feed(self, event: Event) -> None:
        work = deque(self.session.handle(event, self.now))
        while work:
            action = work.popleft()
            outcome: Event | None = None
            match action:
                case OpenListener(listener):
                    failed = self.binds.popleft() if self.binds else False
                    if failed:
                        outcome = ListenerFailed(listener, "EADDRINUSE")
                    else:
                        self.listening.add(listener)
                        outcome = ListenerOpened(listener, 45000 + listener % 10)
                case CloseListener(listener):
                    self.listening.discard(listener)
                case DialData(dial):
                    self.dials.append(dial)
                case RejectData(conn) | ConnectData(conn):  # closed, or the session's own
                    self.held.discard(conn)
                case JoinData(a, b):
                    assert a in self.held and b in self.held, (action, self.held)
                    self.held -= {a, b}
                    self.joined.append(a)
            if outcome is not None:
                work.extendleft(reversed(self.session.handle(outcome, self.now)))

    def op(self, op: tuple[object, ...]) -> None:
        kind = op[0]
        if kind == "client":
            self.feed(client(op[1]))  # type: ignore[arg-type]
        elif kind == "server":
            self.feed(server(op[1]))  # type: ignore[arg-type]
        elif kind == "dial" and self.dials:
            dial = self.dials.pop(int(op[1]) % len(self.dials))  # type: ignore[call-overload]
            if op[2]:
                self.conns += 1
                self.held.add(self.conns)
                self.feed(DataDialed(dial, self.conns))
            else:
                self.feed(DialFailed(dial, "refused"))
        elif kind == "accept" and self.listening:
            listener = sorted(self.listening)[int(op[1]) % len(self.listening)]  # type: ignore[call-overload]
            self.conns += 1
            self.held.add(self.conns)
            self.feed(DataAccepted(listener, self.conns, PEERS[int(op[2])]))  # type: ignore[call-overload]
        elif kind == "finish" and self.joined:
            conn = self.joined.pop(int(op[1]) % len(self.joined))  # type: ignore[call-overload]
            self.feed(DataFinished(conn, 3, 4, 1.0, None if op[2] else "reset"))
        elif kind == "tick":
            self.now += float(op[1])  # type: ignore[arg-type]
            self.feed(TimerFired())


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["passive", "active", "PASV", "EPSV", "PORT", "EPRT"]),
    st.lists(st.booleans(), max_size=6),
    st.lists(OPS, max_size=40),
)
def test_conversion_never_leaves_a_listener_or_a_connection_behind(
    mode: str, bind_fails: list[bool], ops: list[tuple[object, ...]]
) -> None:
    run = Run(mode, bind_fails)
    run.feed(server(b"220 hi\r\n"))
    for op in ops:
        run.op(op)
    run.feed(client(b""))
    run.feed(server(b""))
    run.feed(CloseRequested("end"))
    run.feed(TimerFired())
    assert run.session.closed
    assert not run.listening, run.listening
    assert not run.held, run.held
