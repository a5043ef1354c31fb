"""Explicit FTPS in the core (core/tls.py), as exact-sequence playbooks (tests/core/playbook.py):
AUTH passed through and, after the server's 234, every byte relayed unread; AUTH refused with
534 under `refuse`; a 234 nobody asked for changes nothing."""

from __future__ import annotations

from ftpalg.core import policy as P
from ftpalg.core.messages import CloseSession, OpenWindow, Send, ShutdownWrite
from ftpalg.core.observations import ProtocolViolation, SessionClosed, TlsPassthrough, TlsRefused
from ftpalg.core.policy import CorePolicy
from ftpalg.core.tls import REFUSED
from tests.core.harness import CLIENT, FACES_V4, SERVER
from tests.core.playbook import Playbook, client, server

F = FACES_V4
AUTH = b"AUTH TLS\r\n"
OK_234 = b"234 Proceed with negotiation.\r\n"
WINDOW = OpenWindow(F.client.host, F.server_face.host, F.client_face.host)
HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256))  # NULs, no LF
PASV_IN = b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"


def tls_started(pb: Playbook) -> Playbook:
    pb >> client(AUTH) << [Send(SERVER, AUTH)]
    pb >> server(OK_234) << [Send(CLIENT, OK_234), TlsPassthrough(AUTH), WINDOW]
    return pb


def test_after_234_every_byte_passes_unread_both_ways() -> None:
    pb = tls_started(Playbook())
    pb >> client(HELLO) << [Send(SERVER, HELLO)]  # binary, NUL bytes: never framed
    pb >> server(PASV_IN) << [Send(CLIENT, PASV_IN)]  # inside TLS it would be unreadable
    pb >> client(b"A" * 10_000) << [Send(SERVER, b"A" * 10_000)]  # no line limit either
    assert pb.session.expectation is None and pb.session.backlog(CLIENT) == 0


def test_bytes_sent_behind_the_234_are_passed_on_raw_in_order() -> None:
    pb = Playbook()
    pb >> client(AUTH) << [Send(SERVER, AUTH)]
    both = OK_234 + b"\x17\x03\x03\x00\x05hello"  # the 234 and the first TLS record together
    (
        pb
        >> server(both)
        << [
            Send(CLIENT, OK_234),
            TlsPassthrough(AUTH),
            WINDOW,
            Send(CLIENT, b"\x17\x03\x03\x00\x05hello"),
        ]
    )


def test_eof_and_close_after_the_switch() -> None:
    pb = tls_started(Playbook())
    pb >> client(b"") << [ShutdownWrite(SERVER)]
    pb >> server(b"\x15\x03\x03\x00\x02\x01\x00") << [Send(CLIENT, b"\x15\x03\x03\x00\x02\x01\x00")]
    reason = "closed by both peers"
    pb >> server(b"") << [ShutdownWrite(CLIENT), SessionClosed(reason), CloseSession(reason)]


def test_a_refused_auth_keeps_the_session_plain() -> None:
    pb = Playbook()
    refusal = b"502 Command not implemented.\r\n"
    pb >> client(AUTH) << [Send(SERVER, AUTH)]
    pb >> server(refusal) << [Send(CLIENT, refusal)]
    pb >> client(b"USER a\r\n") << [Send(SERVER, b"USER a\r\n")]


def test_a_234_nobody_asked_for_changes_nothing() -> None:
    """Without the client's AUTH a server cannot switch the gateway off: a NUL after it is
    still a protocol violation."""
    pb = Playbook()
    pb >> server(OK_234) << [Send(CLIENT, OK_234)]
    why = "NUL byte in command line"
    (
        pb
        >> client(b"\0")
        << [
            Send(CLIENT, P.framing_error(why)),
            ProtocolViolation(CLIENT, why),
            SessionClosed(f"client: {why}"),
            CloseSession(f"client: {why}"),
        ]
    )


def test_refuse_answers_auth_itself() -> None:
    pb = Playbook(policy=CorePolicy(tls="refuse"))
    for line in (AUTH, b"auth ssl\r\n", b"AUTH\r\n"):
        pb >> client(line) << [Send(CLIENT, REFUSED), TlsRefused(line)]
    pb >> client(b"AUTHX\r\n") << [Send(SERVER, b"AUTHX\r\n")]  # another command
