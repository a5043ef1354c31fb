"""The core notes USER, TYPE and the transfer command of each data connection (xferlog), and
gives refusals and session ends the fields the metrics need."""

from __future__ import annotations

from ftpalg.core.messages import DataAccepted, DataFinished, ListenerOpened, Log
from ftpalg.core.session import Session
from tests.core.harness import CLIENT, FACES_V4, SERVER, ep, new_session

F = FACES_V4


def log(actions: list[object], event: str) -> Log:
    (found,) = [a for a in actions if isinstance(a, Log) and a.event == event]
    return found


def passive(s: Session, listener: int, conn: int, now: float) -> None:
    s.receive(SERVER, b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n", now)
    s.handle(ListenerOpened(listener, 50000), now)
    s.handle(DataAccepted(listener, conn, ep("172.20.9.84:1000")), now)


def test_command_before_or_after_the_connection_is_noted() -> None:
    s = new_session()
    s.receive(CLIENT, b"USER alice\r\nPASS s3cret\r\nTYPE I\r\n", 0.0)
    passive(s, 1, 1, 0.0)  # connect first, then the command (ftplib's passive order)
    s.receive(CLIENT, b"RETR dir/a file.bin\r\n", 0.0)
    s.receive(CLIENT, b"STOR ignored.bin\r\n", 0.0)  # not for this connection
    done = log(s.handle(DataFinished(1, 0, 10, 0.1), 1.0), "data_finished").fields
    assert (done["user"], done["command"], done["path"], done["type"]) == (
        b"alice", "RETR", b"dir/a file.bin", "I")  # fmt: skip
    assert b"s3cret" not in repr(done).encode()
    s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\nTYPE A\r\nLIST\r\n", 2.0)  # command first
    s.handle(ListenerOpened(2, 4675), 2.0)
    s.handle(DataAccepted(2, 2, ep("172.20.9.80:20")), 2.0)
    done = log(s.handle(DataFinished(2, 5, 0, 0.1), 3.0), "data_finished").fields
    assert (done["command"], done["path"], done["type"]) == ("LIST", b"", "A")


def test_unknown_command_and_user() -> None:
    s = new_session()
    passive(s, 1, 1, 0.0)
    done = log(s.handle(DataFinished(1, 0, 0, 0.1), 1.0), "data_finished").fields
    assert (done["user"], done["command"], done["path"]) == (None, None, None)


def test_refusal_reasons_and_dropped_expectation() -> None:
    s = new_session()
    bounce = log(s.receive(CLIENT, b"PORT 10,0,0,1,18,67\r\n", 0.0), "command_refused")
    low = log(s.receive(CLIENT, b"PORT 172,20,9,84,0,22\r\n", 0.0), "command_refused")
    assert (bounce.fields["reason"], low.fields["reason"]) == ("bounce", "low_port")
    s.receive(SERVER, b"229 (|||6446|)\r\n", 0.0)
    s.handle(ListenerOpened(1, 6446), 0.0)
    closed = log(s.close("test"), "session_closed")
    assert closed.fields["expectation_dropped"] is True
    assert log(new_session().close("x"), "session_closed").fields["expectation_dropped"] is False
