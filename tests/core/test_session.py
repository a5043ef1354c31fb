"""Exact-sequence playbooks for the core session: each step feeds one event and compares the
WHOLE list of actions it returns, in order, with an explicit expected list
(tests/core/playbook.py). Every scenario also runs through the shared invariant checker.

Faces (tests/core/harness.py, FACES_V4): the client 172.20.9.84 is seen by the server as
203.0.113.5; the server 172.20.9.80 is reached by the client as 198.51.100.80.
"""

from __future__ import annotations

from ftpalg.core import policy as P
from ftpalg.core.messages import (
    CloseListener,
    CloseRequested,
    CloseSession,
    ConnectData,
    DataAccepted,
    DataConnected,
    DataFinished,
    Endpoint,
    Faces,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    RejectData,
    Send,
    ShutdownWrite,
    TimerFired,
)
from ftpalg.core.observations import (
    CommandRefused,
    DataEnded,
    DataMode,
    DataRejected,
    DataStarted,
    ExpectationEnded,
    ExpectationOutcome,
    MalformedCommandRefused,
    MalformedReplyForwarded,
    NoDataPort,
    ProtocolViolation,
    Refusal,
    ReplyAddressMismatch,
    RewriteImpossible,
    Rewritten,
    SessionClosed,
    UnterminatedAddressLineDropped,
)
from ftpalg.core.policy import CorePolicy
from ftpalg.core.wire import Kind
from tests.core.harness import (
    CLIENT,
    FACES_4TO6,
    FACES_6TO4,
    FACES_V4,
    FACES_V6,
    SERVER,
    ScriptedRandom,
    ep,
    new_session,
)
from tests.core.playbook import Playbook, client, server

F = FACES_V4
CLIENT_FACE, SERVER_FACE = F.client_face.host, F.server_face.host
USED, EXPIRED = ExpectationOutcome.USED, ExpectationOutcome.EXPIRED
REPLACED, DROPPED = ExpectationOutcome.REPLACED, ExpectationOutcome.DROPPED
ACTIVE, PASSIVE = DataMode.ACTIVE, DataMode.PASSIVE

PORT_IN = b"PORT 172,20,9,84,18,67\r\n"
PORT_OUT = b"PORT 203,0,113,5,18,67\r\n"
PORT_LISTEN = ep("203.0.113.5:4675")
PORT_TARGET = ep("172.20.9.84:4675")
PORT_REWRITTEN = Rewritten(Kind.PORT, PORT_IN, PORT_OUT, PORT_LISTEN, PORT_TARGET, 0, 0)

PASV_IN = b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"
PASV_OUT = b"227 Entering Passive Mode (198,51,100,80,195,80).\r\n"  # two bytes longer
PASV_LISTEN = ep("198.51.100.80:50000")
PASV_TARGET = ep("172.20.9.80:50000")
PASV_REWRITTEN = Rewritten(Kind.PASV, PASV_IN, PASV_OUT, PASV_LISTEN, PASV_TARGET, 2, 2)

EPSV_IN = b"229 Entering Extended Passive Mode (|||6446|)\r\n"
SERVER_20 = ep("172.20.9.80:20")  # the server's active data port
CLIENT_DATA = ep("172.20.9.84:40001")  # the client's passive data connection


def active_open(listener: int, port: int, target: Endpoint, faces: Faces = F) -> OpenListener:
    """The listener a PORT/EPRT asks for: on the face the server sees the client as, for
    the server only, joined to the client's endpoint (`target`) from the server's face."""
    server = faces.server.host
    return OpenListener(
        listener, faces.client_face.host, port, server, target, faces.server_face.host
    )


def passive_open(listener: int, port: int, target: Endpoint, faces: Faces = F) -> OpenListener:
    """The listener a 227/229 asks for: on the face the client believes is the server, for
    the client only, joined to the server's endpoint (`target`) from the client's face."""
    client = faces.client.host
    return OpenListener(
        listener, faces.server_face.host, port, client, target, faces.client_face.host
    )


def ended(
    conn: int,
    mode: DataMode,
    to_client: int,
    to_server: int,
    seconds: float,
    result: str = "ok",
    user: bytes | None = None,
    command: str | None = None,
    path: bytes | None = None,
    type: str = "A",
) -> DataEnded:
    """The DataEnded of a connection of the FACES_V4 client; unnamed: "ok", nothing known."""
    return DataEnded(
        conn, mode, to_client, to_server, seconds, result, user, command, path, type, F.client
    )


def port_armed(pb: Playbook) -> Playbook:
    """PORT announced and its listener bound: the expectation on 203.0.113.5:4675 is armed."""
    pb >> client(PORT_IN) << [active_open(1, 4675, PORT_TARGET)]
    pb >> ListenerOpened(1, 4675) << [Send(SERVER, PORT_OUT), PORT_REWRITTEN]
    return pb


def pasv_armed(pb: Playbook) -> Playbook:
    """227 announced and its listener bound: the expectation on 198.51.100.80:50000."""
    pb >> server(PASV_IN) << [passive_open(1, 50000, PASV_TARGET)]
    pb >> ListenerOpened(1, 50000) << [Send(CLIENT, PASV_OUT), PASV_REWRITTEN]
    return pb


def port_accepted(pb: Playbook, conn: int = 7) -> Playbook:
    """... and the server connected from port 20: ftpalg dials the client."""
    (
        pb
        >> DataAccepted(1, conn, SERVER_20)
        << [
            CloseListener(1),
            ExpectationEnded(USED, PORT_LISTEN),
            ConnectData(conn, PORT_TARGET, ep("198.51.100.80:20")),
            DataStarted(conn, SERVER_20, PORT_TARGET, ACTIVE),
        ]
    )
    return pb


def pasv_accepted(pb: Playbook, conn: int = 4) -> Playbook:
    """... and the client connected: ftpalg dials the server from any port."""
    (
        pb
        >> DataAccepted(1, conn, CLIENT_DATA)
        << [
            CloseListener(1),
            ExpectationEnded(USED, PASV_LISTEN),
            ConnectData(conn, PASV_TARGET, ep("203.0.113.5:0")),
            DataStarted(conn, CLIENT_DATA, PASV_TARGET, PASSIVE),
        ]
    )
    return pb


# ---- the four address lines through a listener ------------------------------------------


def test_port_active_transfer() -> None:
    pb = port_armed(Playbook())
    assert pb.session.expectation is not None
    port_accepted(pb)  # source port 20 kept, dialed from the face the client knows
    assert pb.session.expectation is None
    pb >> DataConnected(7) << []
    # active: accepted from the server, dialed to the client
    pb.at(3.0) >> DataFinished(7, 1000, 0, 0.5) << [ended(7, ACTIVE, 1000, 0, 0.5)]


def test_pasv_227_passive_transfer() -> None:
    pb = pasv_accepted(pasv_armed(Playbook()))
    pb >> DataConnected(4) << []
    # passive: accepted from the client, dialed to the server
    pb.at(2.0) >> DataFinished(4, 10, 20000, 1.5) << [ended(4, PASSIVE, 20000, 10, 1.5)]


def test_epsv_229_rewritten_with_the_bound_port() -> None:
    pb = Playbook()
    pb >> server(EPSV_IN) << [passive_open(1, 6446, ep("172.20.9.80:6446"))]
    out = b"229 Entering Extended Passive Mode (|||50001|)\r\n"
    listen, target = ep("198.51.100.80:50001"), ep("172.20.9.80:6446")
    (
        pb
        >> ListenerOpened(1, 50001)
        << [Send(CLIENT, out), Rewritten(Kind.EPSV, EPSV_IN, out, listen, target, 1, 1)]
    )
    (
        pb
        >> DataAccepted(1, 2, CLIENT_DATA)
        << [
            CloseListener(1),
            ExpectationEnded(USED, listen),
            ConnectData(2, target, ep("203.0.113.5:0")),
            DataStarted(2, CLIENT_DATA, target, PASSIVE),
        ]
    )


def test_eprt_on_ipv6_is_written_uncompressed() -> None:
    pb = Playbook(FACES_V6)
    line = b"EPRT |2|2001:db8::1|4675|\r\n"
    out = b"EPRT |2|2001:0db8:0002:0000:0000:0000:0000:0001|4675|\r\n"
    listen, target = ep("[2001:db8:2::1]:4675"), ep("[2001:db8::1]:4675")
    pb >> client(line) << [active_open(1, 4675, target, FACES_V6)]
    (
        pb
        >> ListenerOpened(1, 4675)
        << [Send(SERVER, out), Rewritten(Kind.EPRT, line, out, listen, target, 28, 28)]
    )
    peer = ep("[2001:db8:2::10]:20")
    (
        pb
        >> DataAccepted(1, 3, peer)
        << [
            CloseListener(1),
            ExpectationEnded(USED, listen),
            ConnectData(3, target, ep("[2001:db8:2::10]:20")),
            DataStarted(3, peer, target, ACTIVE),
        ]
    )


def test_eprt_family_translation_on_a_4to6_gateway() -> None:
    pb = Playbook(FACES_4TO6)
    line = b"EPRT |1|172.20.9.84|4675|\r\n"
    out = b"EPRT |2|2001:0db8:0002:0000:0000:0000:0000:0001|4675|\r\n"
    listen = ep("[2001:db8:2::1]:4675")
    pb >> client(line) << [active_open(1, 4675, ep("172.20.9.84:4675"), FACES_4TO6)]
    (
        pb
        >> ListenerOpened(1, 4675)
        << [Send(SERVER, out), Rewritten(Kind.EPRT, line, out, listen, PORT_TARGET, 28, 28)]
    )


# ---- listeners that cannot be bound -------------------------------------------------------


def test_bind_failures_retry_in_the_data_port_range_then_succeed() -> None:
    policy = CorePolicy(data_ports=(50000, 50009))
    pb = Playbook(policy=policy, rng=ScriptedRandom(50003, 50007))
    pb >> client(PORT_IN) << [active_open(1, 4675, PORT_TARGET)]
    pb >> ListenerFailed(1, "EADDRINUSE") << [active_open(1, 50003, PORT_TARGET)]
    pb >> ListenerFailed(1, "EADDRINUSE") << [active_open(1, 50007, PORT_TARGET)]
    out = b"PORT 203,0,113,5,195,87\r\n"  # 50007; the data still goes to port 4675
    listen = ep("203.0.113.5:50007")
    (
        pb
        >> ListenerOpened(1, 50007)
        << [Send(SERVER, out), Rewritten(Kind.PORT, PORT_IN, out, listen, PORT_TARGET, 1, 1)]
    )


def test_no_free_port_for_a_227_gives_425_and_releases_the_held_lines() -> None:
    policy = CorePolicy(data_ports=(50000, 50001), port_tries=2)
    pb = Playbook(policy=policy, rng=ScriptedRandom(50001, 50001))
    line = b"227 (172,20,9,80,19,137)\r\n"
    pb >> server(line + b"NEXT\r\n") << [passive_open(1, 5001, ep("172.20.9.80:5001"))]
    pb >> ListenerFailed(1, "EADDRINUSE") << [passive_open(1, 50001, ep("172.20.9.80:5001"))]
    (
        pb
        >> ListenerFailed(1, "EADDRINUSE")
        << [
            Send(CLIENT, b"425 Can't open data connection: no free port on the gateway.\r\n"),
            NoDataPort(line, "EADDRINUSE"),
            Send(CLIENT, b"NEXT\r\n"),
        ]
    )  # the second random port was tried already: the tries are used up
    assert pb.session.expectation is None


def test_no_free_port_for_a_port_gives_500_and_nothing_reaches_the_server() -> None:
    pb = Playbook(policy=CorePolicy(port_tries=0), rng=ScriptedRandom())
    pb >> client(PORT_IN + b"RETR x\r\n") << [active_open(1, 4675, PORT_TARGET)]
    (
        pb
        >> ListenerFailed(1, "EACCES")
        << [
            Send(CLIENT, b"500 Illegal PORT command: no free data port on the gateway.\r\n"),
            NoDataPort(PORT_IN, "EACCES"),
            Send(SERVER, b"RETR x\r\n"),
        ]
    )
    pb >> ListenerFailed(1, "EACCES") << []  # no longer pending: ignored


# ---- one expectation at a time: replaced, expired, stolen, stale -------------------------


def test_a_second_port_replaces_the_first() -> None:
    pb = port_armed(Playbook())
    line = b"EPRT |1|172.20.9.84|4676|\r\n"
    out = b"EPRT |1|203.0.113.5|4676|\r\n"
    listen, target = ep("203.0.113.5:4676"), ep("172.20.9.84:4676")
    pb >> client(line) << [active_open(2, 4676, target)]
    (
        pb
        >> ListenerOpened(2, 4676)
        << [
            CloseListener(1),
            ExpectationEnded(REPLACED, PORT_LISTEN),
            Send(SERVER, out),
            Rewritten(Kind.EPRT, line, out, listen, target, 0, 0),
        ]
    )
    (pb >> DataAccepted(1, 9, SERVER_20) << [RejectData(9), DataRejected(Refusal.STALE, SERVER_20)])


def test_a_229_replaces_a_port() -> None:
    pb = port_armed(Playbook())
    line = b"229 (|||6446|)\r\n"
    listen, target = ep("198.51.100.80:6446"), ep("172.20.9.80:6446")
    pb >> server(line) << [passive_open(2, 6446, target)]
    (
        pb
        >> ListenerOpened(2, 6446)
        << [
            CloseListener(1),
            ExpectationEnded(REPLACED, PORT_LISTEN),
            Send(CLIENT, line),
            Rewritten(Kind.EPSV, line, line, listen, target, 0, 0),
        ]
    )


def test_the_expectation_expires_at_its_deadline() -> None:
    pb = Playbook(policy=CorePolicy(expect_timeout=300.0, idle_timeout=900.0))
    line = b"EPRT |1|172.20.9.84|4675|\r\n"
    out = b"EPRT |1|203.0.113.5|4675|\r\n"
    pb.at(10.0) >> client(line) << [active_open(1, 4675, PORT_TARGET)]
    (
        pb
        >> ListenerOpened(1, 4675)
        << [Send(SERVER, out), Rewritten(Kind.EPRT, line, out, PORT_LISTEN, PORT_TARGET, 0, 0)]
    )
    assert pb.session.next_deadline() == 310.0
    pb.at(309.9) >> TimerFired() << []
    pb.at(310.0) >> TimerFired() << [CloseListener(1), ExpectationEnded(EXPIRED, PORT_LISTEN)]
    assert pb.session.next_deadline() == 910.0  # the idle deadline remains
    (
        pb.at(311.0)
        >> DataAccepted(1, 1, SERVER_20)
        << [RejectData(1), DataRejected(Refusal.STALE, SERVER_20)]
    )


def test_theft_is_refused_and_the_expectation_stays_for_the_right_peer() -> None:
    pb = pasv_armed(Playbook())
    for conn, thief in ((2, ep("10.9.9.9:1234")), (3, ep("172.20.9.80:40000"))):
        (
            pb
            >> DataAccepted(1, conn, thief)
            << [
                RejectData(conn),
                DataRejected(Refusal.THEFT, thief, "172.20.9.84", "198.51.100.80:50000"),
            ]
        )
    assert pb.session.expectation is not None
    pasv_accepted(pb, conn=4)
    (
        pb
        >> DataAccepted(1, 5, CLIENT_DATA)
        << [RejectData(5), DataRejected(Refusal.STALE, CLIENT_DATA)]
    )  # single use


def test_a_connection_without_an_expectation_is_stale() -> None:
    pb = Playbook()
    peer = ep("172.20.9.80:20")
    pb >> DataAccepted(5, 1, peer) << [RejectData(1), DataRejected(Refusal.STALE, peer)]


# ---- order: lines wait behind a listener and behind a data dial -------------------------


def test_lines_wait_while_a_listener_opens() -> None:
    pb = Playbook()
    pb >> client(PORT_IN + b"RETR x\r\nNO") << [active_open(1, 4675, PORT_TARGET)]
    assert pb.session.backlog(CLIENT) == len(b"RETR x\r\nNO")
    pb >> client(b"OP\r\n") << []
    assert pb.session.backlog(CLIENT) == len(b"RETR x\r\nNOOP\r\n")
    pb >> server(b"200 Hello\r\n") << [Send(CLIENT, b"200 Hello\r\n")]  # the other side flows
    (
        pb
        >> ListenerOpened(1, 4675)
        << [
            Send(SERVER, PORT_OUT),
            PORT_REWRITTEN,
            Send(SERVER, b"RETR x\r\n"),
            Send(SERVER, b"NOOP\r\n"),
        ]
    )
    assert pb.session.backlog(CLIENT) == 0


def test_a_226_behind_an_active_dial_is_released_by_data_connected() -> None:
    pb = port_accepted(port_armed(Playbook()))
    # an empty file: the server is done before ftpalg reached the client
    pb >> server(b"150 Opening\r\n226 Transfer complete.\r\nXY") << []
    assert pb.session.backlog(SERVER) == len(b"150 Opening\r\n226 Transfer complete.\r\nXY")
    pb >> client(b"NOOP\r\n") << [Send(SERVER, b"NOOP\r\n")]  # the client side is not held
    (
        pb
        >> DataConnected(7)
        << [Send(CLIENT, b"150 Opening\r\n"), Send(CLIENT, b"226 Transfer complete.\r\n")]
    )
    assert pb.session.backlog(SERVER) == 2  # the unterminated "XY"
    pb >> server(b"\r\n") << [Send(CLIENT, b"XY\r\n")]
    assert pb.session.backlog(SERVER) == 0


def test_a_226_behind_an_active_dial_is_released_by_a_failed_dial() -> None:
    pb = port_accepted(port_armed(Playbook()))
    pb >> server(b"226 Transfer complete.\r\n") << []
    (
        pb
        >> DataFinished(7, 0, 0, 0.1, error="connect refused")
        << [
            Send(CLIENT, b"226 Transfer complete.\r\n"),
            ended(7, ACTIVE, 0, 0, 0.1, result="connect refused"),
        ]
    )


def test_client_lines_wait_for_a_passive_dial() -> None:
    pb = pasv_accepted(pasv_armed(Playbook()))
    pb >> client(b"RETR x\r\n") << []
    assert pb.session.backlog(CLIENT) == 8
    pb >> server(b"200 still here\r\n") << [Send(CLIENT, b"200 still here\r\n")]
    (
        pb
        >> DataFinished(4, 0, 0, 0.1, error="connect refused")
        << [
            Send(SERVER, b"RETR x\r\n"),  # released first, so the record knows the command
            ended(4, PASSIVE, 0, 0, 0.1, result="connect refused", command="RETR", path=b"x"),
        ]
    )
    assert pb.session.backlog(CLIENT) == 0


def test_pipelined_and_split_lines() -> None:  # kernel §8 items 15, 16 and 31 differ
    pb = Playbook()
    pb >> client(b"NOOP\r\nPO") << [Send(SERVER, b"NOOP\r\n")]
    pb >> client(b"RT 172,20,") << []
    pb >> client(b"9,84,18,67\r\n") << [active_open(1, 4675, PORT_TARGET)]


# ---- what the client may not announce, what the server announces wrongly ---------------


def test_refused_and_malformed_commands_are_answered_and_not_forwarded() -> None:
    pb = Playbook()
    bounce = b"500 Illegal PORT command: 10.0.0.1 is not your address.\r\n"
    low = b"500 Illegal EPRT command: data port 22 < 1024.\r\n"
    malformed = (
        b"501 Syntax error in PORT parameters (expected h1,h2,h3,h4,p1,p2 followed by CR).\r\n"
    )
    line = b"PORT 10,0,0,1,18,67\r\n"
    pb >> client(line) << [Send(CLIENT, bounce), CommandRefused(Refusal.BOUNCE, line, bounce)]
    line = b"EPRT |1|172.20.9.84|22|\r\n"
    pb >> client(line) << [Send(CLIENT, low), CommandRefused(Refusal.LOW_PORT, line, low)]
    line = b"PORT 1,2,3\r\n"
    reason = "expected h1,h2,h3,h4,p1,p2 followed by CR"
    (
        pb
        >> client(line)
        << [Send(CLIENT, malformed), MalformedCommandRefused(Kind.PORT, reason, line)]
    )


def test_a_malformed_227_is_forwarded_unchanged() -> None:
    pb = Playbook()
    line = b"227 Logout.\r\n"
    (
        pb
        >> server(line)
        << [
            Send(CLIENT, line),
            MalformedReplyForwarded(Kind.PASV, "no address in 227 reply", line),
        ]
    )


def test_a_227_naming_another_address_goes_to_the_server_itself() -> None:
    pb = Playbook()
    line = b"227 Entering Passive Mode (10,1,2,3,195,80).\r\n"
    out = b"227 Entering Passive Mode (198,51,100,80,195,80).\r\n"
    (
        pb
        >> server(line)
        << [ReplyAddressMismatch(line, "172.20.9.80"), passive_open(1, 50000, PASV_TARGET)]
    )
    (
        pb
        >> ListenerOpened(1, 50000)
        << [Send(CLIENT, out), Rewritten(Kind.PASV, line, out, PASV_LISTEN, PASV_TARGET, 5, 5)]
    )


def test_loose_trusts_the_address_in_the_227() -> None:
    pb = Playbook(policy=CorePolicy(loose=True))
    line = b"227 Entering Passive Mode (10,1,2,3,195,80).\r\n"
    out = b"227 Entering Passive Mode (198,51,100,80,195,80).\r\n"
    target = ep("10.1.2.3:50000")
    (pb >> server(line) << [ReplyAddressMismatch(line, "10.1.2.3"), passive_open(1, 50000, target)])
    (
        pb
        >> ListenerOpened(1, 50000)
        << [Send(CLIENT, out), Rewritten(Kind.PASV, line, out, PASV_LISTEN, target, 5, 5)]
    )


def test_a_face_the_line_cannot_carry() -> None:
    pb = Playbook(FACES_4TO6)  # PORT cannot name the client's IPv6 face
    reason = "2001:db8:2::1 cannot be written as h1,h2,h3,h4"
    (
        pb
        >> client(PORT_IN)
        << [
            RewriteImpossible(PORT_IN, reason),
            Send(CLIENT, b"500 Illegal PORT command: use EPRT on this connection.\r\n"),
        ]
    )
    # a 227 cannot name the server's IPv6 face: forwarded as is (RFC 6384 translation off;
    # with it on, tests/core/test_nat64.py)
    pb = Playbook(FACES_6TO4, CorePolicy(nat64=False))
    line = b"227 (172,20,9,80,19,137)\r\n"
    reason = "2001:db8:1::80 cannot be written as h1,h2,h3,h4"
    pb >> server(line) << [RewriteImpossible(line, reason), Send(CLIENT, line)]


# ---- EOF ----------------------------------------------------------------------------------


def test_eof_passes_the_unterminated_last_line_and_half_closes() -> None:
    pb = Playbook()
    pb >> client(b"QUIT\r\nXY") << [Send(SERVER, b"QUIT\r\n")]
    pb >> client(b"") << [Send(SERVER, b"XY"), ShutdownWrite(SERVER)]
    pb >> client(b"NOOP\r\n") << []  # after its EOF a side sends nothing
    pb >> server(b"221 Bye\r\n") << [Send(CLIENT, b"221 Bye\r\n")]
    (
        pb
        >> server(b"")
        << [
            ShutdownWrite(CLIENT),
            SessionClosed("closed by both peers"),
            CloseSession("closed by both peers"),
        ]
    )


def test_an_unterminated_address_line_at_eof_is_dropped() -> None:
    pb = Playbook()
    line = b"PORT 172,20,9,84,18,67\r"
    pb >> client(line) << []
    pb >> client(b"") << [UnterminatedAddressLineDropped(CLIENT, line), ShutdownWrite(SERVER)]
    line = b"227 (1,2"  # malformed too: it is an address line all the same
    pb >> server(line) << []
    (
        pb
        >> server(b"")
        << [
            UnterminatedAddressLineDropped(SERVER, line),
            ShutdownWrite(CLIENT),
            SessionClosed("closed by both peers"),
            CloseSession("closed by both peers"),
        ]
    )


def test_eof_waits_for_the_held_line() -> None:
    pb = Playbook()
    pb >> client(PORT_IN) << [active_open(1, 4675, PORT_TARGET)]
    pb >> client(b"") << []
    (
        pb
        >> ListenerOpened(1, 4675)
        << [Send(SERVER, PORT_OUT), PORT_REWRITTEN, ShutdownWrite(SERVER)]
    )


def test_nothing_is_sent_to_a_side_after_its_write_half_was_shut() -> None:
    pb = Playbook()
    pb >> server(b"221 Bye\r\n") << [Send(CLIENT, b"221 Bye\r\n")]
    pb >> server(b"") << [ShutdownWrite(CLIENT)]
    line = b"PORT 1,2\r\n"
    reason = "expected h1,h2,h3,h4,p1,p2 followed by CR"
    pb >> client(line) << [MalformedCommandRefused(Kind.PORT, reason, line)]  # no 501
    pb >> client(b"NOOP\r\n") << [Send(SERVER, b"NOOP\r\n")]  # the other way still works
    error = "NUL byte in command line"
    (
        pb
        >> client(b"\0")
        << [
            ProtocolViolation(CLIENT, error),  # no 500
            SessionClosed(f"client: {error}"),
            CloseSession(f"client: {error}"),
        ]
    )


def test_no_421_after_the_clients_write_half_was_shut() -> None:
    pb = Playbook()
    pb >> server(b"") << [ShutdownWrite(CLIENT)]
    (
        pb
        >> CloseRequested("gateway shutting down", P.SHUTTING_DOWN)
        << [SessionClosed("gateway shutting down"), CloseSession("gateway shutting down")]
    )


# ---- framing errors -----------------------------------------------------------------------


def test_a_nul_byte_ends_the_session_after_the_lines_before_it() -> None:
    pb = Playbook()
    error = "NUL byte in command line"
    (
        pb
        >> client(b"USER a\r\nPASS \0x\r\nNOOP\r\n")
        << [
            Send(SERVER, b"USER a\r\n"),
            Send(
                CLIENT,
                b"500 Command rejected: NUL byte in command line; closing control connection.\r\n",
            ),
            ProtocolViolation(CLIENT, error),
            SessionClosed(f"client: {error}"),
            CloseSession(f"client: {error}"),
        ]
    )
    pb >> client(b"NOOP\r\n") << []  # closed: nothing more happens
    pb >> server(b"200 late\r\n") << []


def test_a_line_too_long_from_the_server_ends_the_session() -> None:
    pb = Playbook()
    error = "line longer than 4096 bytes"
    (
        pb
        >> server(b"220 hi\r\n" + b"A" * 5000)
        << [
            Send(CLIENT, b"220 hi\r\n"),
            Send(CLIENT, P.framing_error(error)),
            ProtocolViolation(SERVER, error),
            SessionClosed(f"server: {error}"),
            CloseSession(f"server: {error}"),
        ]
    )


def test_a_framing_error_waits_behind_a_held_line() -> None:
    pb = Playbook()
    error = "NUL byte in command line"
    pb >> client(PORT_IN + b"NO\0") << [active_open(1, 4675, PORT_TARGET)]
    (
        pb
        >> ListenerOpened(1, 4675)
        << [
            Send(SERVER, PORT_OUT),
            PORT_REWRITTEN,
            Send(CLIENT, P.framing_error(error)),
            ProtocolViolation(CLIENT, error),
            CloseListener(1),
            ExpectationEnded(DROPPED, PORT_LISTEN),
            SessionClosed(f"client: {error}"),
            CloseSession(f"client: {error}"),
        ]
    )


# ---- timeouts -----------------------------------------------------------------------------


def test_idle_timeout() -> None:
    pb = Playbook(policy=CorePolicy(idle_timeout=60.0))
    pb.at(10.0) >> client(b"NOOP\r\n") << [Send(SERVER, b"NOOP\r\n")]
    assert pb.session.next_deadline() == 70.0
    pb.at(69.9) >> TimerFired() << []
    (
        pb.at(70.0)
        >> TimerFired()
        << [
            Send(CLIENT, b"421 Idle timeout, closing control connection.\r\n"),
            SessionClosed("idle timeout"),
            CloseSession("idle timeout"),
        ]
    )
    assert pb.session.next_deadline() is None
    pb.at(200.0) >> TimerFired() << []


def test_no_idle_timeout_while_data_flows() -> None:
    pb = pasv_accepted(pasv_armed(Playbook(policy=CorePolicy(idle_timeout=60.0))))
    assert pb.session.next_deadline() is None  # no expectation, no idle clock
    pb.at(1000.0) >> TimerFired() << []
    pb >> DataConnected(4) << []
    pb.at(1000.0) >> DataFinished(4, 5, 5, 999.0) << [ended(4, PASSIVE, 5, 5, 999.0)]
    assert pb.session.next_deadline() == 1060.0


def test_expiry_and_idle_timeout_in_one_timer() -> None:
    pb = Playbook(policy=CorePolicy(expect_timeout=100.0, idle_timeout=100.0))
    port_armed(pb)
    (
        pb.at(100.0)
        >> TimerFired()
        << [
            CloseListener(1),
            ExpectationEnded(EXPIRED, PORT_LISTEN),
            Send(CLIENT, P.IDLE_TIMEOUT),
            SessionClosed("idle timeout"),
            CloseSession("idle timeout"),
        ]
    )


def test_slowloris_line_timeout_even_while_bytes_trickle() -> None:
    pb = Playbook(policy=CorePolicy(line_timeout=60.0, idle_timeout=900.0))
    for t in range(59):  # one byte per second keeps the idle clock fresh...
        pb.at(float(t)) >> client(b"X") << []
    assert pb.session.next_deadline() == 60.0  # ...but the line started at t=0
    (
        pb.at(60.0)
        >> TimerFired()
        << [
            Send(
                CLIENT, b"421 Command line not completed in time, closing control connection.\r\n"
            ),
            SessionClosed("line timeout"),
            CloseSession("line timeout"),
        ]
    )


def test_the_line_clock_restarts_with_each_new_line() -> None:
    pb = Playbook(policy=CorePolicy(line_timeout=60.0, idle_timeout=900.0))
    pb.at(0.0) >> client(b"NOOP\r\nNO") << [Send(SERVER, b"NOOP\r\n")]
    pb.at(50.0) >> client(b"OP\r\nNO") << [Send(SERVER, b"NOOP\r\n")]
    assert pb.session.next_deadline() == 110.0  # the "NO" started at t=50
    pb.at(60.0) >> TimerFired() << []
    pb.at(70.0) >> client(b"OP\r\n") << [Send(SERVER, b"NOOP\r\n")]
    assert pb.session.next_deadline() == 970.0  # no partial line: the idle clock only


def test_an_eof_ends_the_partial_line_and_its_clock() -> None:
    pb = Playbook(policy=CorePolicy(line_timeout=60.0, idle_timeout=900.0))
    pb.at(0.0) >> client(b"XY") << []
    assert pb.session.next_deadline() == 60.0
    pb.at(10.0) >> client(b"") << [Send(SERVER, b"XY"), ShutdownWrite(SERVER)]
    assert pb.session.next_deadline() == 910.0
    pb.at(60.0) >> TimerFired() << []
    pb.at(70.0) >> server(b"150 still sending\r\n") << [Send(CLIENT, b"150 still sending\r\n")]


def test_line_timeout_while_a_listener_is_pending() -> None:
    pb = Playbook(policy=CorePolicy(line_timeout=60.0))
    pb >> client(PORT_IN + b"RE") << [active_open(1, 4675, PORT_TARGET)]
    (
        pb.at(60.0)
        >> TimerFired()
        << [
            Send(CLIENT, P.LINE_TIMEOUT),
            CloseListener(1),
            SessionClosed("line timeout"),
            CloseSession("line timeout"),
        ]
    )
    pb >> ListenerOpened(1, 4675) << [CloseListener(1)]  # bound too late: closed at once


# ---- closing from outside -----------------------------------------------------------------


def test_close_with_a_reply_cancels_the_pending_listener_and_the_expectation() -> None:
    pb = port_armed(Playbook())
    line = b"227 (172,20,9,80,19,137)\r\n"
    pb >> server(line) << [passive_open(2, 5001, ep("172.20.9.80:5001"))]
    (
        pb
        >> CloseRequested("shutdown", P.SHUTTING_DOWN)
        << [
            Send(CLIENT, b"421 Service not available: the gateway is shutting down.\r\n"),
            CloseListener(2),
            CloseListener(1),
            ExpectationEnded(DROPPED, PORT_LISTEN),
            SessionClosed("shutdown"),
            CloseSession("shutdown"),
        ]
    )
    pb >> ListenerOpened(2, 5001) << [CloseListener(2)]
    pb >> ListenerFailed(2, "EADDRINUSE") << []
    (pb >> DataAccepted(1, 1, SERVER_20) << [RejectData(1), DataRejected(Refusal.STALE, SERVER_20)])
    pb >> CloseRequested("again", P.SHUTTING_DOWN) << []
    pb >> client(b"NOOP\r\n") << []
    pb.at(10000.0) >> TimerFired() << []


def test_close_without_a_reply() -> None:
    pb = Playbook()
    (
        pb
        >> CloseRequested("server gone")
        << [SessionClosed("server gone"), CloseSession("server gone")]
    )


def test_session_close_is_close_requested() -> None:
    s = new_session()
    assert s.close("shutdown", b"421 bye\r\n") == [
        Send(CLIENT, b"421 bye\r\n"),
        SessionClosed("shutdown"),
        CloseSession("shutdown"),
    ]
    assert s.close("again") == []


def test_a_running_transfer_is_reported_after_close() -> None:
    pb = pasv_accepted(pasv_armed(Playbook()))
    (
        pb
        >> CloseRequested("client gone")
        << [SessionClosed("client gone"), CloseSession("client gone")]
    )
    (
        pb.at(1.0)
        >> DataFinished(4, 10, 20, 1.0, error="reset")
        << [ended(4, PASSIVE, 20, 10, 1.0, result="reset")]
    )
    pb >> DataFinished(4, 10, 20, 1.0) << []  # reported once
    pb >> DataFinished(99, 0, 0, 0.0) << []  # unknown: ignored
    pb >> DataConnected(99) << []


# ---- a whole session ----------------------------------------------------------------------


def test_a_passive_download_from_greeting_to_quit() -> None:
    pb = Playbook()
    pb >> server(b"220 ready\r\n") << [Send(CLIENT, b"220 ready\r\n")]
    pb >> client(b"USER alice\r\n") << [Send(SERVER, b"USER alice\r\n")]
    pb >> server(b"331 Password\r\n") << [Send(CLIENT, b"331 Password\r\n")]
    (
        pb
        >> client(b"PASS s3cret\r\nTYPE I\r\n")
        << [
            Send(SERVER, b"PASS s3cret\r\n"),
            Send(SERVER, b"TYPE I\r\n"),
        ]
    )
    (
        pb
        >> server(b"230 In\r\n200 Binary\r\n")
        << [
            Send(CLIENT, b"230 In\r\n"),
            Send(CLIENT, b"200 Binary\r\n"),
        ]
    )
    pb >> client(b"PASV\r\n") << [Send(SERVER, b"PASV\r\n")]
    pasv_armed(pb)
    pasv_accepted(pb.at(1.0), conn=4)  # ftplib connects first, then sends RETR
    pb >> client(b"RETR a.bin\r\n") << []  # waits for the dial to the server
    pb >> DataConnected(4) << [Send(SERVER, b"RETR a.bin\r\n")]
    pb >> server(b"150 Opening\r\n") << [Send(CLIENT, b"150 Opening\r\n")]
    done = ended(4, PASSIVE, 1 << 20, 0, 1.5, "ok", b"alice", "RETR", b"a.bin", "I")
    pb.at(2.5) >> DataFinished(4, 0, 1 << 20, 1.5) << [done]
    pb >> server(b"226 Done\r\n") << [Send(CLIENT, b"226 Done\r\n")]
    pb >> client(b"QUIT\r\n") << [Send(SERVER, b"QUIT\r\n")]
    pb >> server(b"221 Bye\r\n") << [Send(CLIENT, b"221 Bye\r\n")]
    pb >> server(b"") << [ShutdownWrite(CLIENT)]
    (
        pb.at(3.0)
        >> client(b"")
        << [
            ShutdownWrite(SERVER),
            SessionClosed("closed by both peers"),
            CloseSession("closed by both peers"),
        ]
    )
    assert pb.session.next_deadline() is None
