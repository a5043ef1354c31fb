"""Issue 16 item 8 in the core: the command/reply trace (`--log-level debug`), failed logins,
and a data connection's `result` following its transfer's final reply (core/trace.py,
core/transfer.py)."""

from __future__ import annotations

import random

from ftpalg.core.messages import (
    Action,
    DataAccepted,
    DataConnected,
    DataFinished,
    ListenerFailed,
    ListenerOpened,
    Send,
    TimerFired,
)
from ftpalg.core.observations import DataEnded, DataMode, LoginFailed
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Session
from ftpalg.core.trace import LineTraced, masked
from ftpalg.core.transfer import REPLY_WAIT, CommandNotes
from tests.core.harness import CLIENT, FACES_V4, SERVER, new_session
from tests.core.playbook import Playbook, client, server
from tests.core.test_session import (
    CLIENT_DATA,
    PASV_IN,
    PASV_OUT,
    PORT_IN,
    PORT_OUT,
    ended,
    pasv_accepted,
    pasv_armed,
)

PASSIVE = DataMode.PASSIVE


def traces(actions: list[Action]) -> list[tuple[str, dict[str, object]]]:
    return [(a.event, a.fields()) for a in actions if isinstance(a, LineTraced)]


def tracing(policy: CorePolicy | None = None) -> Session:
    s = new_session(policy=policy)
    s.trace = True
    return s


# ---- the trace ------------------------------------------------------------------------------


def test_no_trace_unless_asked() -> None:
    s = new_session()
    assert not s.trace
    out = s.receive(CLIENT, b"USER a\r\nPASS b\r\n", 0.0) + s.receive(SERVER, b"230 ok\r\n", 0)
    assert traces(out) == []


def test_each_line_traced_once_in_order_with_pass_and_acct_masked() -> None:
    s = tracing()
    out = s.receive(CLIENT, b"USER alice\r\nPASS s3cret\r\nacct  42 x\r\nNOOP\r\n", 0.0)
    assert traces(out) == [
        ("command", {"line": b"USER alice\r\n"}),
        ("command", {"line": b"PASS ****\r\n"}),
        ("command", {"line": b"acct ****\r\n"}),
        ("command", {"line": b"NOOP\r\n"}),
    ]
    # each trace comes right before what its line caused
    kinds = [type(a).__name__ for a in out]
    assert kinds == ["LineTraced", "Send"] * 4
    assert b"s3cret" not in repr(traces(out)).encode()
    out = s.receive(SERVER, b"331 Password\r\n", 0.0)
    assert traces(out) == [("reply", {"line": b"331 Password\r\n"})]
    assert LineTraced(CLIENT, b"PASS x\r\n").level == "debug"


def test_an_address_line_is_traced_when_it_leaves_rewritten() -> None:
    s = tracing()
    assert traces(s.receive(CLIENT, PORT_IN + b"NOOP\r\n", 0.0)) == []  # both wait
    out = s.handle(ListenerOpened(1, 4675), 0.0)
    assert traces(out) == [
        ("command", {"line": PORT_IN, "sent": PORT_OUT}),
        ("command", {"line": b"NOOP\r\n"}),
    ]
    s.receive(SERVER, PASV_IN, 0.0)
    out = s.handle(ListenerOpened(2, 50000), 0.0)
    assert traces(out) == [("reply", {"line": PASV_IN, "sent": PASV_OUT})]


def test_an_unchanged_announcement_and_a_refused_or_unbound_line_are_traced() -> None:
    s = tracing()
    epsv = b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    s.receive(SERVER, epsv, 0.0)
    assert traces(s.handle(ListenerOpened(1, 6446), 0.0)) == [("reply", {"line": epsv})]
    bounce = b"PORT 10,0,0,1,18,67\r\n"
    out = s.receive(CLIENT, bounce, 0.0)
    assert traces(out) == [("command", {"line": bounce})]  # answered by ftpalg
    s = tracing(CorePolicy(port_tries=0))
    s.receive(CLIENT, PORT_IN, 0.0)
    out = s.handle(ListenerFailed(1, "EADDRINUSE"), 0.0)
    assert traces(out) == [("command", {"line": PORT_IN})]


def test_terminate_mode_traces_the_changed_feat_reply() -> None:
    s = tracing(CorePolicy(tls="terminate"))
    s.receive(CLIENT, b"FEAT\r\n", 0.0)
    out = s.receive(SERVER, b"211 no features\r\n", 0.0)
    ((event, fields),) = traces(out)
    assert event == "reply" and fields["line"] == b"211 no features\r\n"
    assert b"AUTH TLS" in fields["sent"]  # type: ignore[operator]


def test_nothing_traced_once_tls_is_passed_through() -> None:
    s = tracing()
    s.receive(CLIENT, b"AUTH TLS\r\n", 0.0)
    out = s.receive(SERVER, b"234 go\r\n", 0.0)
    assert traces(out) == [("reply", {"line": b"234 go\r\n"})]
    out = s.receive(CLIENT, b"\x16\x03\x01PASS x\r\n", 0.0) + s.receive(SERVER, b"230\r\n", 0)
    assert traces(out) == []
    assert [a for a in out if isinstance(a, Send)]  # passed on, unread


def test_masked_keeps_other_lines_and_the_line_end() -> None:
    assert masked(b"PASSIVE\r\n") == b"PASS ****\r\n"  # over-redaction is harmless
    assert masked(b"PASS\n") == b"PASS ****\n"
    assert masked(b"RETR PASS\r\n") == b"RETR PASS\r\n"


# ---- failed logins ------------------------------------------------------------------------


def test_530_to_user_or_pass_and_5xx_to_pass_are_failed_logins() -> None:
    pb = Playbook()
    pb >> server(b"220 hi\r\n") << [Send(CLIENT, b"220 hi\r\n")]
    pb >> client(b"USER bob\r\n") << [Send(SERVER, b"USER bob\r\n")]
    pb >> server(b"331 pw\r\n") << [Send(CLIENT, b"331 pw\r\n")]
    pb >> client(b"PASS x\r\n") << [Send(SERVER, b"PASS x\r\n")]
    failed = LoginFailed("PASS", b"bob", b"530 Login incorrect.")
    pb >> server(b"530 Login incorrect.\r\n") << [failed, Send(CLIENT, b"530 Login incorrect.\r\n")]
    pb >> client(b"USER eve\r\n") << [Send(SERVER, b"USER eve\r\n")]
    refused = LoginFailed("USER", b"eve", b"530 Not allowed")
    pb >> server(b"530 Not allowed\r\n") << [refused, Send(CLIENT, b"530 Not allowed\r\n")]
    pb >> client(b"PASS y\r\n") << [Send(SERVER, b"PASS y\r\n")]
    first = b"503 Login with USER first.\r\n"
    other = LoginFailed("PASS", b"eve", first.rstrip())
    pb >> server(first) << [other, Send(CLIENT, first)]


def test_other_replies_are_no_failed_login() -> None:
    pb = Playbook()
    pb >> client(b"USER bob\r\n") << [Send(SERVER, b"USER bob\r\n")]
    pb >> server(b"331 pw\r\n") << [Send(CLIENT, b"331 pw\r\n")]  # not a failure
    pb >> client(b"PASS x\r\n") << [Send(SERVER, b"PASS x\r\n")]
    (
        pb
        >> server(b"230-Welcome\r\n530 inside\r\n")
        << [
            Send(CLIENT, b"230-Welcome\r\n"),
            Send(CLIENT, b"530 inside\r\n"),  # inside the multi-line reply: not its end
        ]
    )
    pb >> server(b"230 In\r\n") << [Send(CLIENT, b"230 In\r\n")]
    pb >> client(b"RETR x\r\n") << [Send(SERVER, b"RETR x\r\n")]
    pb >> server(b"530 Not logged in\r\n") << [Send(CLIENT, b"530 Not logged in\r\n")]
    assert not pb.session.notes.awaiting  # nothing is read per line any more


# ---- a data connection's result follows its transfer's final reply -------------------------


def retr_running(pb: Playbook) -> Playbook:
    pasv_accepted(pasv_armed(pb))
    pb >> client(b"RETR f\r\n") << []  # waits for the dial
    pb >> DataConnected(4) << [Send(SERVER, b"RETR f\r\n")]
    pb >> server(b"150 Here\r\n") << [Send(CLIENT, b"150 Here\r\n")]
    return pb


def test_550_after_the_data_connection_ended_is_the_result() -> None:
    pb = retr_running(Playbook())
    pb.at(1.0) >> DataFinished(4, 0, 5, 0.5) << []  # held for the final reply
    assert pb.session.next_deadline() == 1.0 + REPLY_WAIT
    failed = ended(4, PASSIVE, 5, 0, 0.5, "550 Gone.", None, "RETR", b"f", reply=b"550 Gone.")
    pb.at(1.2) >> server(b"550 Gone.\r\n") << [failed, Send(CLIENT, b"550 Gone.\r\n")]
    assert not failed.ok and failed.level == "warning"


def test_426_before_the_data_connection_ended_is_the_result() -> None:
    pb = retr_running(Playbook())
    pb >> server(b"426 Aborted.\r\n") << [Send(CLIENT, b"426 Aborted.\r\n")]
    aborted = ended(4, PASSIVE, 5, 0, 0.5, "426 Aborted.", None, "RETR", b"f", "A", b"426 Aborted.")
    pb.at(1.0) >> DataFinished(4, 0, 5, 0.5) << [aborted]


def test_226_keeps_ok_and_a_data_error_stays_the_result() -> None:
    """A data error is the more specific result, with a 2xx or a 4xx reply alike."""
    pb = retr_running(Playbook())
    pb.at(1.0) >> DataFinished(4, 0, 5, 0.5, "TLS handshake failed") << []
    tls = ended(4, PASSIVE, 5, 0, 0.5, "TLS handshake failed", None, "RETR", b"f", "A", b"426 x")
    pb >> server(b"426 x\r\n") << [tls, Send(CLIENT, b"426 x\r\n")]
    pb = retr_running(Playbook())
    pb.at(1.0) >> DataFinished(4, 0, 5, 0.5, "reset") << []
    done = ended(4, PASSIVE, 5, 0, 0.5, "reset", None, "RETR", b"f", reply=b"226 Done")
    pb >> server(b"226 Done\r\n") << [done, Send(CLIENT, b"226 Done\r\n")]
    pb = retr_running(Playbook())
    pb.at(1.0) >> DataFinished(4, 0, 5, 0.5) << []
    done = ended(4, PASSIVE, 5, 0, 0.5, "ok", None, "RETR", b"f", reply=b"226 Done")
    pb >> server(b"226 Done\r\n") << [done, Send(CLIENT, b"226 Done\r\n")]
    assert done.ok


def test_no_reply_within_the_bound_or_before_the_end_logs_what_is_known() -> None:
    pb = retr_running(Playbook())
    pb.at(1.0) >> DataFinished(4, 0, 5, 0.5) << []
    pb.at(1.0 + REPLY_WAIT - 0.01) >> TimerFired() << []
    unknown = ended(4, PASSIVE, 5, 0, 0.5, "ok", None, "RETR", b"f")
    pb.at(1.0 + REPLY_WAIT) >> TimerFired() << [unknown]
    pb >> server(b"226 late\r\n") << [Send(CLIENT, b"226 late\r\n")]  # reported already
    assert pb.session.next_deadline() == 1.0 + REPLY_WAIT + 900.0  # the idle timeout
    s = Session(FACES_V4, CorePolicy(), 0.0, random.Random(1))
    s.receive(SERVER, PASV_IN, 0.0)
    s.handle(ListenerOpened(1, 50000), 0.0)
    s.receive(CLIENT, b"LIST\r\n", 0.0)
    s.handle(DataAccepted(1, 4, CLIENT_DATA), 0.0)
    s.handle(DataConnected(4), 0.0)
    assert [a for a in s.handle(DataFinished(4, 0, 9, 0.1), 0.0) if isinstance(a, DataEnded)] == []
    out = s.close("shutdown")
    (late,) = [a for a in out if isinstance(a, DataEnded)]
    assert (late.command, late.result, late.reply) == ("LIST", "ok", None)


def test_a_connection_no_command_used_is_reported_at_once() -> None:
    notes = CommandNotes()
    notes.announced()
    notes.accepted(1)
    out: list[Action] = []
    record = notes.finished(1)
    notes.report(ended(1, PASSIVE, 0, 0, 0.1), record, 0.0, out)
    assert out == [ended(1, PASSIVE, 0, 0, 0.1)] and notes.deadline is None
    notes.on_timer(100.0, out)  # nothing held: nothing happens
    assert len(out) == 1
