"""The invariant checker can fail: real traces pass, the same traces with one action moved,
doubled, dropped or altered raise InvariantViolation naming the broken invariant."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from ftpalg.core import policy as P
from ftpalg.core.messages import (
    Action,
    CloseListener,
    CloseSession,
    ConnectData,
    Event,
    Send,
    Side,
)
from ftpalg.core.observations import (
    DataMode,
    DataStarted,
    ExpectationEnded,
    ExpectationOutcome,
    MalformedCommandRefused,
    Rewritten,
    SessionClosed,
)
from ftpalg.core.wire import Kind
from tests.core.driver import Accept, Bind, Close, Connected, Feed, Op, Run, Setup, Tick
from tests.core.harness import CLIENT, SERVER, ep
from tests.core.invariants import Checker, InvariantViolation, check_trace

Trace = list[tuple[Event, float, list[Action]]]
PORT_IN = b"PORT 172,20,9,84,18,67\r\n"
PORT_OUT = b"PORT 203,0,113,5,18,67\r\n"


def record(*ops: Op, setup: Setup | None = None) -> tuple[Run, Trace]:
    r = Run(setup or Setup())
    for op in ops:
        r.op(op)
    return r, list(r.trace)


def with_actions(trace: Trace, step: int, actions: Sequence[Action]) -> Trace:
    event, now, _ = trace[step]
    return [*trace[:step], (event, now, list(actions)), *trace[step + 1 :]]


def broken(r: Run, trace: Trace, invariant: str) -> str:
    with pytest.raises(InvariantViolation) as caught:
        check_trace(r.faces, r.policy, trace)
    message = str(caught.value)
    assert message.startswith(f"{invariant}:"), message
    return message


def test_the_recorded_traces_pass() -> None:
    r, trace = record(Feed(CLIENT, b"USER a\r\nPASS b\r\n"), Feed(CLIENT, PORT_IN), Bind(0))
    check_trace(r.faces, r.policy, trace)


def test_a_reordered_forward_is_an_order_violation() -> None:
    r, trace = record(Feed(CLIENT, b"USER a\r\nPASS b\r\n"))
    assert trace[0][2] == [Send(SERVER, b"USER a\r\n"), Send(SERVER, b"PASS b\r\n")]
    swapped = [Send(SERVER, b"PASS b\r\n"), Send(SERVER, b"USER a\r\n")]
    broken(r, with_actions(trace, 0, swapped), "ORDER")


def test_a_duplicated_forward() -> None:
    r, trace = record(Feed(CLIENT, b"USER a\r\nPASS b\r\n"))
    twice = [Send(SERVER, b"USER a\r\n"), *trace[0][2]]
    broken(r, with_actions(trace, 0, twice), "DUPLICATION")
    again = [*trace[0][2], Send(SERVER, b"PASS b\r\n")]
    broken(r, with_actions(trace, 0, again), "DUPLICATION")


def test_a_lost_or_forged_line() -> None:
    r, trace = record(Feed(CLIENT, b"USER a\r\nPASS b\r\n"))
    broken(r, with_actions(trace, 0, [Send(SERVER, b"USER a\r\n")]), "LOSS")
    forged = [Send(SERVER, b"USER a\r\n"), Send(SERVER, b"PASS c\r\n")]
    broken(r, with_actions(trace, 0, forged), "LOSS")


def test_a_line_overtaking_a_held_line() -> None:
    r, trace = record(Feed(CLIENT, PORT_IN + b"RETR x\r\n"), Bind(0))
    early = [*trace[0][2], Send(SERVER, b"RETR x\r\n")]
    broken(r, with_actions(trace, 0, early), "ORDER")


def test_a_226_overtaking_the_data_dial() -> None:
    ops = (Feed(CLIENT, PORT_IN), Bind(0), Accept(0, 1, 20), Feed(SERVER, b"226 ok\r\n"))
    r, trace = record(*ops, Connected(0))
    assert trace[3][2] == [] and trace[4][2] == [Send(CLIENT, b"226 ok\r\n")]
    broken(r, with_actions(trace, 3, [Send(CLIENT, b"226 ok\r\n")]), "ORDER")


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (b"PORT 203,0,113,5,18,68\r\n", "does not announce port 4675"),
        (b"PORT 203,0,113,6,18,67\r\n", "does not announce 203.0.113.5"),
        (b"Port 203,0,113,5,18,67\r\n", "bytes outside the span changed"),
        (b"PORT 203,0,113,5,18,67\n", "bytes outside the span changed"),
        (PORT_IN, "forwarded unchanged"),
        (b"PORT 203,0,113,005,18,67\r\n", "expected the rewritten line"),
    ],
)
def test_a_wrong_replacement(sent: bytes, why: str) -> None:
    r, trace = record(Feed(CLIENT, PORT_IN), Bind(0))
    listen, target = ep("203.0.113.5:4675"), ep("172.20.9.84:4675")
    rewritten = Rewritten(Kind.PORT, PORT_IN, PORT_OUT, listen, target, 0, 0)
    assert trace[1][2] == [Send(SERVER, PORT_OUT), rewritten]
    assert why in broken(r, with_actions(trace, 1, [Send(SERVER, sent), rewritten]), "REWRITE")


def test_a_wrong_reply_of_ftpalgs_own() -> None:
    line = b"PORT 1,2,3\r\n"
    r, trace = record(Feed(CLIENT, line))
    reason = "expected h1,h2,h3,h4,p1,p2 followed by CR"
    refused = MalformedCommandRefused(Kind.PORT, reason, line)
    assert trace[0][2] == [Send(CLIENT, P.malformed_reply(Kind.PORT, reason)), refused]
    generic: list[Action] = [Send(CLIENT, b"501 Syntax error.\r\n"), refused]
    broken(r, with_actions(trace, 0, generic), "REPLY")
    r, trace = record(Feed(CLIENT, b"PORT 10,0,0,1,18,67\r\n"))  # a bounce, answered as low port
    low = P.reply(500, "Illegal PORT command: data port 4675 < 1024.")
    broken(r, with_actions(trace, 0, [Send(CLIENT, low), *trace[0][2][1:]]), "REPLY")


def test_a_send_after_shutdown_write() -> None:
    r, trace = record(Feed(SERVER, b""), Close(reply=True))
    assert trace[1][2] == [SessionClosed("shutdown"), CloseSession("shutdown")]
    late = [Send(CLIENT, P.SHUTTING_DOWN), *trace[1][2]]
    broken(r, with_actions(trace, 1, late), "SHUT")


def test_an_action_after_close_session() -> None:
    r, trace = record(Close(reply=False), Feed(CLIENT, b"NOOP\r\n"))
    assert trace[1][2] == []
    broken(r, with_actions(trace, 1, [Send(SERVER, b"NOOP\r\n")]), "CLOSED")


def test_a_data_connection_from_the_wrong_peer_taken() -> None:
    r, trace = record(Feed(CLIENT, PORT_IN), Bind(0), Accept(0, 2, 20))  # a stranger
    target, stranger = ep("172.20.9.84:4675"), ep("192.0.2.99:20")
    taken: list[Action] = [
        CloseListener(1),
        ExpectationEnded(ExpectationOutcome.USED, ep("203.0.113.5:4675")),
        ConnectData(1, target, ep("198.51.100.80:20")),
        DataStarted(1, stranger, target, DataMode.ACTIVE),
    ]
    broken(r, with_actions(trace, 2, taken), "DATA")


def test_a_passive_dial_from_a_fixed_port() -> None:
    r, trace = record(Feed(SERVER, b"229 (|||6446|)\r\n"), Bind(0), Accept(0, 0, 40001))
    actions = trace[2][2]
    dial = actions[2]
    assert isinstance(dial, ConnectData) and dial.source == ep("203.0.113.5:0")
    fixed = ConnectData(dial.conn, dial.target, ep("203.0.113.5:40001"))
    broken(r, with_actions(trace, 2, [*actions[:2], fixed, *actions[3:]]), "DATA")


def test_an_early_or_missing_timeout() -> None:
    r, trace = record(Feed(CLIENT, b"NOOP\r\n"), Tick(5.0), Tick(200.0))
    idle: list[Action] = [
        Send(CLIENT, P.IDLE_TIMEOUT),
        SessionClosed("idle timeout"),
        CloseSession("idle timeout"),
    ]
    assert trace[2][2] == idle
    broken(r, with_actions(trace, 1, idle), "TIMER")  # 5 s: the idle timeout is 100 s
    broken(r, with_actions(trace, 2, []), "TIMER")


def test_a_wrong_observation() -> None:
    r, trace = record(Feed(CLIENT, PORT_IN), Bind(0))
    send, rewritten = trace[1][2]
    assert isinstance(rewritten, Rewritten)
    wrong = dataclasses.replace(rewritten, delta=3, seq_offset=3)
    broken(r, with_actions(trace, 1, [send, wrong]), "OBSERVATION")
    broken(r, with_actions(trace, 1, [send]), "OBSERVATION")


def test_backlog_and_deadline_are_compared_with_the_model() -> None:
    r, _ = record(Feed(CLIENT, b"NOOP\r\nNO"))
    checker: Checker = r.checker
    checker.check_state({CLIENT: 2, SERVER: 0}, checker.next_deadline())
    with pytest.raises(InvariantViolation, match=r"^BACKLOG"):
        checker.check_state({CLIENT: 0, SERVER: 0}, checker.next_deadline())
    with pytest.raises(InvariantViolation, match=r"^TIMER"):
        checker.check_state({CLIENT: 2, SERVER: 0}, 1e9)


def test_a_nul_forwarded() -> None:
    r, trace = record(Feed(CLIENT, b"NOOP\r\n"))
    broken(r, with_actions(trace, 0, [Send(SERVER, b"NO\0P\r\n")]), "NUL")


def test_every_side_is_checked() -> None:
    for side in Side:
        r, trace = record(Feed(side, b"200 x\r\n"))
        broken(r, with_actions(trace, 0, []), "LOSS")
