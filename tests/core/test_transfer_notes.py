"""The core notes USER, TYPE and the transfer command of each data connection (xferlog), and
gives refusals and session ends the typed fields the metrics need."""

from __future__ import annotations

from ftpalg.core.messages import (
    Action,
    DataAccepted,
    DataConnected,
    DataFinished,
    ListenerOpened,
)
from ftpalg.core.observations import (
    CommandRefused,
    DataEnded,
    ExpectationEnded,
    ExpectationOutcome,
    Refusal,
    SessionClosed,
)
from ftpalg.core.session import Session
from ftpalg.core.transfer import CommandNotes, Transfer
from tests.core.harness import CLIENT, SERVER, ep, new_session


def ended(actions: list[Action]) -> DataEnded:
    (found,) = [a for a in actions if isinstance(a, DataEnded)]
    return found


def passive(s: Session, listener: int, conn: int, now: float) -> None:
    s.receive(SERVER, b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n", now)
    s.handle(ListenerOpened(listener, 50000), now)
    s.handle(DataAccepted(listener, conn, ep("172.20.9.84:1000")), now)


def test_command_before_or_after_the_connection_is_noted() -> None:
    s = new_session()
    s.receive(CLIENT, b"USER alice\r\nPASS s3cret\r\nTYPE I\r\n", 0.0)
    s.receive(SERVER, b"331 Password.\r\n230 In.\r\n200 Binary.\r\n", 0.0)
    passive(s, 1, 1, 0.0)  # connect first, then the command (ftplib's passive order)
    s.receive(CLIENT, b"RETR dir/a file.bin\r\n", 0.0)
    s.handle(DataConnected(1), 0.0)
    s.receive(CLIENT, b"STOR ignored.bin\r\n", 0.0)  # not for this connection
    s.receive(SERVER, b"226 Sent.\r\n", 0.0)
    done = ended(s.handle(DataFinished(1, 0, 10, 0.1), 1.0))
    assert (done.user, done.command, done.path, done.type) == (
        b"alice",
        "RETR",
        b"dir/a file.bin",
        "I",
    )
    assert b"s3cret" not in repr(done).encode()
    s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\nTYPE A\r\nLIST\r\n", 2.0)  # command first
    s.handle(ListenerOpened(2, 4675), 2.0)
    s.handle(DataAccepted(2, 2, ep("172.20.9.80:20")), 2.0)
    s.receive(SERVER, b"226 Listed.\r\n", 2.0)  # its final reply: reported at once
    done = ended(s.handle(DataFinished(2, 5, 0, 0.1), 3.0))
    assert (done.command, done.path, done.type) == ("LIST", b"", "A")


def test_unknown_command_and_user() -> None:
    s = new_session()
    passive(s, 1, 1, 0.0)
    done = ended(s.handle(DataFinished(1, 0, 0, 0.1), 1.0))
    assert (done.user, done.command, done.path, done.type) == (None, None, None, "A")


def test_command_notes_give_one_transfer_record_per_connection() -> None:
    notes = CommandNotes()
    notes.client_line(b"TYPE i\r\n")
    notes.announced()
    notes.client_line(b"STOR up.bin\r\n")
    notes.client_line(b"RETR other\r\n")  # the record is taken: only the first counts
    notes.accepted(7)
    notes.announced()  # the next expectation starts a new record
    notes.client_line(b"NLST\r\n")
    notes.accepted(8)
    assert notes.finished(7) == Transfer("STOR", b"up.bin", "I")
    assert notes.finished(8) == Transfer("NLST", b"", "I")
    assert notes.finished(7) == Transfer()  # finished already: empty
    assert notes.finished(99) == Transfer(None, None, "A")


def test_refusal_reasons_and_dropped_expectation() -> None:
    s = new_session()
    bounce = s.receive(CLIENT, b"PORT 10,0,0,1,18,67\r\n", 0.0)
    low = s.receive(CLIENT, b"PORT 172,20,9,84,0,22\r\n", 0.0)
    refusals = [a.reason for a in bounce + low if isinstance(a, CommandRefused)]
    assert refusals == [Refusal.BOUNCE, Refusal.LOW_PORT]
    s.receive(SERVER, b"229 (|||6446|)\r\n", 0.0)
    s.handle(ListenerOpened(1, 6446), 0.0)
    observed = [a for a in s.close("test") if isinstance(a, ExpectationEnded | SessionClosed)]
    assert observed == [
        ExpectationEnded(ExpectationOutcome.DROPPED, ep("198.51.100.80:6446")),
        SessionClosed("test"),
    ]
    assert [a for a in new_session().close("x") if isinstance(a, ExpectationEnded)] == []
