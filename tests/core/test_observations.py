"""How the core's typed observations render as log events: name, level, fields (what the
log renderer and the metrics read; the playbooks in test_session.py check when they come)."""

from __future__ import annotations

import dataclasses
import random

from ftpalg.core.messages import (
    DataAccepted,
    DataConnected,
    DataFinished,
    DataReceived,
    ListenerOpened,
    Side,
)
from ftpalg.core.observations import (
    DataEnded,
    DataMode,
    DataRejected,
    ExpectationEnded,
    ExpectationOutcome,
    ProtocolViolation,
    Refusal,
    Rewritten,
)
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Session
from ftpalg.core.wire import Kind
from tests.core.harness import FACES_V4, ep

LISTEN = ep("203.0.113.5:4675")


def test_fields_render_enums_and_endpoints_as_text() -> None:
    obs = Rewritten(Kind.PORT, b"a", b"b", LISTEN, ep("172.20.9.84:4675"), 0, 0)
    assert (obs.event, obs.level) == ("rewrite", "info")
    assert obs.fields() == {
        "kind": "PORT",
        "before": b"a",
        "after": b"b",
        "listen": "203.0.113.5:4675",
        "target": "172.20.9.84:4675",
        "delta": 0,
        "seq_offset": 0,
    }
    violation = ProtocolViolation(Side.CLIENT, "NUL byte in command line")
    assert (violation.event, violation.level) == ("protocol_violation", "warning")
    assert violation.fields() == {"side": "client", "reason": "NUL byte in command line"}


def test_expectation_ends_are_named_by_outcome_and_quiet_when_told_elsewhere() -> None:
    ends = [ExpectationEnded(outcome, LISTEN) for outcome in ExpectationOutcome]
    assert {end.outcome.value: (end.event, end.level) for end in ends} == {
        "used": ("expectation_used", "debug"),
        "expired": ("expectation_expired", "info"),
        "replaced": ("expectation_replaced", "info"),
        "dropped": ("expectation_dropped", "debug"),
    }
    assert ExpectationEnded(ExpectationOutcome.USED, LISTEN).fields() == {
        "listen": "203.0.113.5:4675"
    }


def test_theft_and_stale_connections_are_different_events() -> None:
    theft = DataRejected(Refusal.THEFT, ep("10.9.9.9:1"), "172.20.9.84", "203.0.113.5:4675")
    stale = DataRejected(Refusal.STALE, ep("10.9.9.9:1"))
    assert (theft.event, stale.event, theft.level) == (
        "data_theft_refused",
        "data_rejected",
        "warning",
    )
    assert stale.fields() == {
        "reason": "stale",
        "peer": "10.9.9.9:1",
        "expected": None,
        "listen": None,
    }


def test_a_failed_data_connection_logs_a_warning_without_the_client() -> None:
    client = ep("172.20.9.84:4666")
    ok = DataEnded(1, DataMode.ACTIVE, 5, 0, 0.1, "ok", None, None, None, "A", client)
    reset = DataEnded(1, DataMode.PASSIVE, 5, 0, 0.1, "reset", b"u", "RETR", b"f", "I", client)
    assert (ok.ok, ok.level, reset.ok, reset.level) == (True, "info", False, "warning")
    assert "client" not in reset.fields() and reset.fields()["mode"] == "passive"


def test_an_estimated_count_says_so_and_an_exact_one_says_nothing() -> None:
    client = ep("172.20.9.84:4666")
    exact = DataEnded(1, DataMode.PASSIVE, 5, 0, 0.1, "ok", None, "RETR", b"f", "I", client)
    guess = dataclasses.replace(exact, estimated=True)
    assert "estimated" not in exact.fields()
    assert guess.fields()["estimated"] is True and guess.fields()["bytes_to_client"] == 5


def test_the_planes_estimate_reaches_data_finished() -> None:
    session = Session(FACES_V4, CorePolicy(), 0.0, random.Random(1))
    session.handle(
        DataReceived(Side.SERVER, b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"), 0.0
    )
    session.handle(ListenerOpened(1, 50000), 0.0)
    session.handle(DataAccepted(1, 7, FACES_V4.client), 0.0)
    session.handle(DataConnected(7), 0.0)
    out = session.handle(DataFinished(7, 0, 3, 0.5, None, estimated=True), 0.0)
    (ended,) = [a for a in out if isinstance(a, DataEnded)]
    assert ended.estimated and (ended.bytes_to_client, ended.bytes_to_server) == (3, 0)
