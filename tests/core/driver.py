"""Scripted runs of a core Session, checked step by step (the fuzz target and the property
tests share it).

How this works. A run is a `Setup` (faces, policy knobs) and a list of operations: bytes or
an EOF from either side, a listener bound (on the port asked for or another) or failing, a
data connection accepted from the expected peer, the other peer or a stranger (on the live
listener or an older one), a dial connected or finished, time passing with or without the
timer firing, a CloseRequested. Operations name listeners and connections by position among
the ones that exist at that moment (`pick`), so any list of operations is a valid run. Every
step goes through `Checker` (tests/core/invariants.py) and the session's `backlog()` and
`next_deadline()` are compared with the model. `finish()` then binds what is still being
bound, completes the dials, sends both EOFs and finishes the data connections: the session
must end, and every line must have been handled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import ip_address

from ftpalg.core import policy as P
from ftpalg.core.messages import (
    Action,
    CloseListener,
    CloseRequested,
    ConnectData,
    DataAccepted,
    DataConnected,
    DataFinished,
    DataReceived,
    Endpoint,
    Event,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    Side,
    TimerFired,
)
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Session
from tests.core.harness import FACES_4TO6, FACES_6TO4, FACES_V4, FACES_V6
from tests.core.invariants import Checker

CLIENT, SERVER = Side.CLIENT, Side.SERVER
FACES = (FACES_V4, FACES_V6, FACES_4TO6, FACES_6TO4)
STRANGER = ip_address("192.0.2.99")
ANNOUNCE = (ip_address("192.0.2.7"), ip_address("2001:db8::7"))


@dataclass(frozen=True)
class Setup:
    faces: int = 0  # index into FACES
    loose: bool = False
    allow_low_data_ports: bool = False
    max_line: int = 4096
    port_tries: int = 3
    auto_bind: bool = False  # bind every listener at once on the port asked for
    seed: int = 0
    tls: str = "passthrough"  # or "refuse", "terminate": what AUTH gets
    strict_data_ports: bool = False  # reverse mode's range-only listeners
    announce: bool = False  # reverse mode's 227 address behind a DNAT (both IP versions)

    def policy(self) -> CorePolicy:
        return CorePolicy(
            loose=self.loose,
            allow_low_data_ports=self.allow_low_data_ports,
            data_ports=(50000, 50003),
            expect_timeout=30.0,
            idle_timeout=100.0,
            line_timeout=20.0,
            max_line=self.max_line,
            port_tries=self.port_tries,
            strict_data_ports=self.strict_data_ports,
            tls=self.tls,
            announce=ANNOUNCE if self.announce else (),
            nat64=False,  # the checker models the plain ALG; test_nat64*.py the translation
        )


@dataclass(frozen=True)
class Feed:
    side: Side
    data: bytes  # b"" is the side's EOF


@dataclass(frozen=True)
class Bind:
    pick: int
    port: int | None = None  # None: the port asked for
    # with no listener being bound: a late ListenerOpened for one closed while being bound


@dataclass(frozen=True)
class Fail:
    pick: int


@dataclass(frozen=True)
class Accept:
    pick: int  # 0: the newest bound listener, 1: the one before, ...
    peer: int  # 0: the client's host, 1: the server's host, 2: a stranger
    port: int


@dataclass(frozen=True)
class Connected:
    pick: int  # among the dials running, else an unknown connection


@dataclass(frozen=True)
class Finish:
    pick: int  # among the connections running, else an unknown connection
    forward: int = 0
    back: int = 0
    error: bool = False


@dataclass(frozen=True)
class Tick:
    delta: float  # time passes, then the timer fires
    to_deadline: bool = False  # ... at next_deadline() instead, when there is one


@dataclass(frozen=True)
class Wait:
    delta: float  # time passes, nothing fires


@dataclass(frozen=True)
class Close:
    reply: bool


Op = Feed | Bind | Fail | Accept | Connected | Finish | Tick | Wait | Close


class Run:
    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.faces = FACES[setup.faces % len(FACES)]
        self.policy = setup.policy()
        self.session = Session(self.faces, self.policy, 0.0, random.Random(setup.seed))
        self.checker = Checker(self.faces, self.policy)
        self.now = 0.0
        self.trace: list[tuple[Event, float, list[Action]]] = []
        self.asked: dict[int, int] = {}  # listener -> the port asked for, not yet resolved
        self.bound: list[int] = []  # listeners bound, oldest first
        self.cancelled: list[int] = []  # listeners closed while being bound
        self.dialing: list[int] = []
        self.running: list[int] = []
        self._conn = 0

    def event(self, event: Event) -> list[Action]:
        actions = self.session.handle(event, self.now)
        self.trace.append((event, self.now, actions))
        self.checker.step(event, self.now, actions)
        backlog = {side: self.session.backlog(side) for side in Side}
        self.checker.check_state(backlog, self.session.next_deadline())
        self._track(event, actions)
        if self.setup.auto_bind:
            for listener, port in list(self.asked.items()):
                if listener in self.asked:
                    self.event(ListenerOpened(listener, port))
        return actions

    def _track(self, event: Event, actions: list[Action]) -> None:
        if isinstance(event, ListenerOpened) and self.asked.pop(event.listener, None) is not None:
            self.bound.append(event.listener)
        if isinstance(event, ListenerFailed):
            self.asked.pop(event.listener, None)  # unless retried, below
        if isinstance(event, DataConnected | DataFinished) and event.conn in self.dialing:
            self.dialing.remove(event.conn)
        if isinstance(event, DataFinished) and event.conn in self.running:
            self.running.remove(event.conn)
        for action in actions:
            if isinstance(action, OpenListener):
                self.asked[action.listener] = action.port
            elif isinstance(action, CloseListener):
                if self.asked.pop(action.listener, None) is not None:
                    self.cancelled.append(action.listener)
            elif isinstance(action, ConnectData):
                self.dialing.append(action.conn)
                self.running.append(action.conn)

    def op(self, op: Op) -> None:
        f = self.faces
        match op:
            case Feed(side, data):
                self.event(DataReceived(side, data))
            case Bind(pick, port):
                if self.asked:
                    listener = sorted(self.asked)[pick % len(self.asked)]
                    self.event(ListenerOpened(listener, port or self.asked[listener]))
                elif self.cancelled:
                    listener = self.cancelled[pick % len(self.cancelled)]
                    self.event(ListenerOpened(listener, port or 50000))
            case Fail(pick):
                if self.asked:
                    listener = sorted(self.asked)[pick % len(self.asked)]
                    self.event(ListenerFailed(listener, "EADDRINUSE"))
            case Accept(pick, peer, port):
                listener = self.bound[-1 - pick % len(self.bound)] if self.bound else 99
                host = (f.client.host, f.server.host, STRANGER)[peer % 3]
                self._conn += 1
                self.event(DataAccepted(listener, self._conn, Endpoint(host, port)))
            case Connected(pick):
                conn = self.dialing[pick % len(self.dialing)] if self.dialing else 1000 + pick
                self.event(DataConnected(conn))
            case Finish(pick, forward, back, error):
                conn = self.running[pick % len(self.running)] if self.running else 1000 + pick
                self.event(DataFinished(conn, forward, back, 0.25, "reset" if error else None))
            case Tick(delta, to_deadline):
                deadline = self.session.next_deadline()
                if to_deadline and deadline is not None:
                    self.now = max(self.now, deadline)
                else:
                    self.now += delta
                self.event(TimerFired())
            case Wait(delta):
                self.now += delta
            case Close(reply):
                self.event(CloseRequested("shutdown", P.SHUTTING_DOWN if reply else None))

    def finish(self) -> None:
        """Resolve what is pending, end both sides; the session must be over."""
        while self.asked or self.dialing:
            if self.asked:
                listener = min(self.asked)
                self.event(ListenerOpened(listener, self.asked[listener]))
            else:
                self.event(DataConnected(self.dialing[0]))
        for side in Side:
            self.event(DataReceived(side, b""))
        for conn in list(self.running):
            self.event(DataFinished(conn, 1, 2, 0.5))
        self.checker.finish()
        assert self.session.closed, "both sides ended but the session did not"


def run(setup: Setup, ops: list[Op]) -> Run:
    r = Run(setup)
    for op in ops:
        r.op(op)
    r.finish()
    return r


# What the generators say: address lines of every kind and family (right, wrong, malformed),
# ordinary commands and replies, lines that break the framing.
CLIENT_LINES = (
    b"PORT 172,20,9,84,18,67\r\n",
    b"port 172,20,9,84,195,81\r\n",
    b"EPRT |1|172.20.9.84|4675|\r\n",
    b"EPRT |2|2001:db8::1|4675|\r\n",
    b"EPRT !2!2001:db8::00001!50002!\r\n",
    b"PORT 10,0,0,1,18,67\r\n",  # bounce
    b"PORT 172,20,9,84,0,21\r\n",  # low port
    b"EPRT |2|2001:db8::1|21|\r\n",
    b"PORT 1,2,3\r\n",
    b"EPRT |3|x|1|\r\n",
    b"PORT 172,20,9,84,18,67",  # no CR LF: unterminated at EOF
    b"USER alice\r\n",
    b"TYPE I\r\n",
    b"RETR a file\r\n",
    b"LIST\r\n",
    b"NOOP\r\n",
    b"\r\n",
    b"\n",
    b"QUIT\r\n",
    b"SITE " + b"x" * 70 + b"\r\n",  # longer than a 64-byte limit
    b"AUTH TLS\r\n",
    b"\x16\x03\x01\x00\x05hello",  # a TLS record: binary, NUL, no line end
    b"PBSZ 0\r\n",  # tls = terminate answers these itself
    b"PROT P\r\n",
    b"PROT C\r\n",
    b"FEAT\r\n",
)
SERVER_LINES = (
    b"220 ready\r\n",
    b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n",
    b"227 Entering Passive Mode (10,1,2,3,195,81)\r\n",  # names another address
    b"229 Entering Extended Passive Mode (|||6446|)\r\n",
    b"229 (!!!50001!)\r\n",
    b"227 Logout.\r\n",
    b"229 (|||0|)\r\n",
    b"227-multi (172,20,9,80,1,2)\r\n",
    b"150 Opening data connection\r\n",
    b"226 Transfer complete\r\n",
    b"200 OK\r\n",
    b"229 (|||6446|)",  # unterminated
    b"421 bye\r\n",
    b"\r\n",
    b"234 AUTH TLS OK.\r\n",
    b"211-Features:\r\n EPSV\r\n211 End\r\n",  # FEAT: terminate adds its TLS features
    b"\x16\x03\x03\x00\x02\x00\x00",  # a TLS record from the server
)
