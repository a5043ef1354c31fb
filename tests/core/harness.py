"""Helpers for driving a core Session in tests: faces, a scripted random source, a simple
outcome classifier."""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import ip_address

from ftpalg.core.messages import (
    Action,
    Endpoint,
    Faces,
    ListenerOpened,
    OpenListener,
    Send,
    Side,
)
from ftpalg.core.observations import Observation
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Session
from ftpalg.core.wire import Address

CLIENT, SERVER = Side.CLIENT, Side.SERVER


def ep(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(ip_address(host.strip("[]")), int(port))


# the kernel write-up's lab: client 172.20.9.84, server 172.20.9.80; NAT shows the client
# as 203.0.113.5 and the client reaches the server as 198.51.100.80 (a DNAT'd public address).
FACES_V4 = Faces(
    client=ep("172.20.9.84:4666"),
    server=ep("172.20.9.80:21"),
    server_face=ep("198.51.100.80:21"),
    client_face=ep("203.0.113.5:4666"),
)
FACES_V6 = Faces(
    client=ep("[2001:db8::1]:40000"),
    server=ep("[2001:db8:2::10]:21"),
    server_face=ep("[2001:db8:2::10]:21"),
    client_face=ep("[2001:db8:2::1]:40000"),
)
# a 4-to-6 gateway: an IPv4 client, an IPv6 server (PORT cannot carry the client's face)
FACES_4TO6 = Faces(
    client=ep("172.20.9.84:4666"),
    server=ep("[2001:db8:2::10]:21"),
    server_face=ep("198.51.100.80:21"),
    client_face=ep("[2001:db8:2::1]:4666"),
)
# a 6-to-4 gateway: an IPv6 client, an IPv4 server (227 cannot carry the server's face)
FACES_6TO4 = Faces(
    client=ep("[2001:db8::1]:40000"),
    server=ep("172.20.9.80:21"),
    server_face=ep("[2001:db8:1::80]:21"),
    client_face=ep("203.0.113.5:40000"),
)


def new_session(
    faces: Faces = FACES_V4, policy: CorePolicy | None = None, seed: int = 1
) -> Session:
    return Session(faces, policy or CorePolicy(), now=0.0, rng=random.Random(seed))


class ScriptedRandom:
    """A RandomSource that returns the given numbers in order (the ports a retry tries)."""

    def __init__(self, *numbers: int) -> None:
        self.numbers = list(numbers)

    def randrange(self, start: int, stop: int, /) -> int:
        number = self.numbers.pop(0)
        assert start <= number < stop, (number, start, stop)
        return number


@dataclass(frozen=True)
class Outcome:
    """What one line did: 'rewrite' (with the new line), 'reply' (FTP reply to the client,
    nothing forwarded), 'forward' (unchanged, no warning) or 'forward-logged'."""

    verdict: str
    text: bytes = b""
    target: str = ""


def outcome(
    side: Side,
    line: bytes,
    faces: Faces = FACES_V4,
    policy: CorePolicy | None = None,
    bound_port: int | None = None,
) -> Outcome:
    session = new_session(faces, policy)
    actions = session.receive(side, line, 0.0)
    opens = [a for a in actions if isinstance(a, OpenListener)]
    if opens:
        port = bound_port if bound_port is not None else opens[0].port
        actions = session.handle(ListenerOpened(opens[0].listener, port), 0.0)
        sent = sends(actions, side.other)
        assert len(sent) == 1 and session.expectation is not None
        return Outcome("rewrite", sent[0], str(session.expectation.target))
    to_other = sends(actions, side.other)
    to_client = sends(actions, CLIENT)
    if side is CLIENT and to_client and not to_other:
        assert len(to_client) == 1
        return Outcome("reply", to_client[0])
    assert to_other == [line], actions
    warned = any(isinstance(a, Observation) and a.level == "warning" for a in actions)
    return Outcome("forward-logged" if warned else "forward", line)


def sends(actions: list[Action], side: Side) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Send) and a.side is side]


def addr(text: str) -> Address:
    return ip_address(text)
