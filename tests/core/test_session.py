"""End-to-end flows through the core session (playbook style: events in, actions out)."""

from __future__ import annotations

from ftpalg.core.messages import (
    CloseListener,
    CloseSession,
    ConnectData,
    DataAccepted,
    DataConnected,
    DataFinished,
    ListenerFailed,
    ListenerOpened,
    Log,
    OpenListener,
    RejectData,
    Send,
    ShutdownWrite,
    TimerFired,
)
from ftpalg.core.policy import CorePolicy
from tests.core.harness import CLIENT, FACES_V4, SERVER, addr, ep, new_session, sends

F = FACES_V4


def logs(actions: list[object], event: str) -> list[Log]:
    return [a for a in actions if isinstance(a, Log) and a.event == event]


def test_port_flow_active_mode() -> None:
    s = new_session()
    acts = s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\n", 1.0)
    assert acts == [OpenListener(1, F.client_face.host, 4675)]
    acts = s.handle(ListenerOpened(1, 4675), 1.0)
    assert sends(acts, SERVER) == [b"PORT 203,0,113,5,18,67\r\n"]
    assert logs(acts, "rewrite")[0].fields["before"] == b"PORT 172,20,9,84,18,67\r\n"
    # the server connects from its data port 20: consumed, dialed from the server's face
    acts = s.handle(DataAccepted(1, 7, ep("172.20.9.80:20")), 2.0)
    assert CloseListener(1) in acts
    assert ConnectData(7, ep("172.20.9.84:4675"), ep("198.51.100.80:20")) in acts
    assert s.expectation is None
    acts = s.handle(DataFinished(7, 1000, 0, 0.5), 3.0)
    (done,) = logs(acts, "data_finished")
    assert done.fields["bytes_to_client"] == 1000 and done.fields["result"] == "ok"


def test_pasv_flow_and_wrong_peer_refused() -> None:
    s = new_session()
    acts = s.receive(SERVER, b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n", 0.0)
    assert acts == [OpenListener(1, F.server_face.host, 50000)]
    acts = s.handle(ListenerOpened(1, 50000), 0.0)
    assert sends(acts, CLIENT) == [b"227 Entering Passive Mode (198,51,100,80,195,80).\r\n"]
    # data-connection theft: another host connects first
    acts = s.handle(DataAccepted(1, 3, ep("10.9.9.9:1234")), 1.0)
    assert RejectData(3) in acts and logs(acts, "data_theft_refused")
    assert s.expectation is not None  # stays for the right peer
    acts = s.handle(DataAccepted(1, 4, ep("172.20.9.84:40001")), 1.0)
    assert ConnectData(4, ep("172.20.9.80:50000"), ep("203.0.113.5:0")) in acts
    # single use: a second connection on the same listener is refused
    acts = s.handle(DataAccepted(1, 5, ep("172.20.9.84:40002")), 1.0)
    assert RejectData(5) in acts


def test_expectation_replaced_by_newer_one() -> None:
    s = new_session()
    s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\n", 0.0)
    s.handle(ListenerOpened(1, 4675), 0.0)
    acts = s.receive(SERVER, b"229 Entering Extended Passive Mode (|||6446|)\r\n", 0.0)
    assert acts == [OpenListener(2, F.server_face.host, 6446)]
    acts = s.handle(ListenerOpened(2, 6446), 0.0)
    assert CloseListener(1) in acts and logs(acts, "expectation_replaced")
    assert s.handle(DataAccepted(1, 9, ep("172.20.9.80:20")), 0.0)[0] == RejectData(9)


def test_expectation_expires_at_deadline() -> None:
    s = new_session(policy=CorePolicy(expect_timeout=300.0, idle_timeout=900.0))
    s.receive(CLIENT, b"EPRT |1|172.20.9.84|4675|\r\n", 10.0)
    s.handle(ListenerOpened(1, 4675), 10.0)
    assert s.next_deadline() == 310.0
    assert s.handle(TimerFired(), 309.9) == []
    acts = s.handle(TimerFired(), 310.0)
    assert CloseListener(1) in acts and logs(acts, "expectation_expired")
    assert s.next_deadline() == 910.0  # idle deadline remains


def test_idle_timeout_closes_with_421_but_not_during_transfers() -> None:
    s = new_session(policy=CorePolicy(idle_timeout=60.0))
    s.receive(SERVER, b"229 (|||6446|)\r\n", 0.0)
    s.handle(ListenerOpened(1, 6446), 0.0)
    s.handle(DataAccepted(1, 1, ep("172.20.9.84:1")), 0.0)
    assert s.next_deadline() is None  # a transfer runs: no idle clock, no expectation
    s.handle(DataFinished(1, 5, 5, 1.0), 100.0)
    assert s.next_deadline() == 160.0
    acts = s.handle(TimerFired(), 160.0)
    assert sends(acts, CLIENT)[0].startswith(b"421 ") and isinstance(acts[-1], CloseSession)
    assert s.next_deadline() is None


def test_bind_failure_tries_other_ports_then_gives_up() -> None:
    s = new_session(policy=CorePolicy(data_ports=(50000, 50001), port_tries=8))
    acts = s.receive(SERVER, b"227 (172,20,9,80,19,137)\r\nNEXT\r\n", 0.0)
    assert acts == [OpenListener(1, F.server_face.host, 5001)]
    tried = {5001}
    for _ in range(2):
        (reopen,) = s.handle(ListenerFailed(1, "EADDRINUSE"), 0.0)
        assert isinstance(reopen, OpenListener) and reopen.port in (50000, 50001)
        tried.add(reopen.port)
    assert tried == {5001, 50000, 50001}
    acts = s.handle(ListenerFailed(1, "EADDRINUSE"), 0.0)
    assert sends(acts, CLIENT) == [
        b"425 Can't open data connection: no free port on the gateway.\r\n",
        b"NEXT\r\n",  # the held line follows, in order
    ]


def test_bind_failure_on_port_gives_500_and_nothing_forwarded() -> None:
    s = new_session(policy=CorePolicy(data_ports=(50000, 50000), port_tries=1))
    s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\n", 0.0)
    s.handle(ListenerFailed(1, "x"), 0.0)
    acts = s.handle(ListenerFailed(1, "x"), 0.0)
    assert sends(acts, CLIENT)[0].startswith(b"500 ") and sends(acts, SERVER) == []
    assert s.expectation is None


def test_lines_after_a_held_line_wait_in_order() -> None:
    s = new_session()
    acts = s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\nRETR x\r\n", 0.0)
    assert sends(acts, SERVER) == []
    acts = s.handle(ListenerOpened(1, 4675), 0.0)
    assert sends(acts, SERVER) == [b"PORT 203,0,113,5,18,67\r\n", b"RETR x\r\n"]


def test_pipelined_and_first_lines_are_parsed() -> None:  # kernel §8 items 15 and 16 differ
    s = new_session()
    acts = s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\n", 0.0)
    assert isinstance(acts[0], OpenListener)
    s2 = new_session()
    acts = s2.receive(CLIENT, b"NOOP\r\nPORT 172,20,9,84,18,67\r\n", 0.0)
    assert sends(acts, SERVER) == [b"NOOP\r\n"] and isinstance(acts[-1], OpenListener)


def test_split_lines_are_reassembled() -> None:  # kernel §8 item 31 stalls
    s = new_session()
    assert s.receive(CLIENT, b"PO", 0.0) == []
    assert s.receive(CLIENT, b"RT 172,20,", 0.0) == []
    acts = s.receive(CLIENT, b"9,84,18,67\r\n", 0.0)
    assert acts == [OpenListener(1, F.client_face.host, 4675)]


def test_line_too_long_and_nul_end_session_with_500() -> None:
    for data in (b"A" * 5000, b"USER \0\r\n"):
        s = new_session()
        acts = s.receive(CLIENT, data, 0.0)
        assert sends(acts, CLIENT)[0].startswith(b"500 ") and isinstance(acts[-1], CloseSession)
        assert s.receive(CLIENT, b"NOOP\r\n", 0.0) == []  # closed: nothing more happens


def test_eof_passes_partial_line_and_half_closes() -> None:
    s = new_session()
    acts = s.receive(CLIENT, b"QUIT\r\nXY", 0.0)
    assert sends(acts, SERVER) == [b"QUIT\r\n"]
    acts = s.receive(CLIENT, b"", 0.0)
    assert acts == [Send(SERVER, b"XY"), ShutdownWrite(SERVER)]
    acts = s.receive(SERVER, b"221 Bye\r\n", 0.0)
    assert sends(acts, CLIENT) == [b"221 Bye\r\n"]
    acts = s.receive(SERVER, b"", 0.0)
    assert ShutdownWrite(CLIENT) in acts and isinstance(acts[-1], CloseSession)


def test_eof_waits_for_held_line() -> None:
    s = new_session()
    s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\n", 0.0)
    assert s.receive(CLIENT, b"", 0.0) == []
    acts = s.handle(ListenerOpened(1, 4675), 0.0)
    assert acts[-1] == ShutdownWrite(SERVER)


def test_close_cancels_expectations_and_pending_opens() -> None:
    s = new_session()
    s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\n", 0.0)
    s.handle(ListenerOpened(1, 4675), 0.0)
    s.receive(SERVER, b"227 (172,20,9,80,19,137)\r\n", 0.0)
    acts = s.close("shutdown", b"421 bye\r\n")
    assert acts[0] == Send(CLIENT, b"421 bye\r\n")
    assert CloseListener(1) in acts and CloseListener(2) in acts
    assert s.handle(ListenerOpened(2, 5001), 0.0) == [CloseListener(2)]
    assert s.handle(DataAccepted(1, 1, ep("172.20.9.80:20")), 0.0)[0] == RejectData(1)
    assert s.close("again") == []


def test_running_transfer_reported_after_close() -> None:
    s = new_session()
    s.receive(SERVER, b"229 (|||6446|)\r\n", 0.0)
    s.handle(ListenerOpened(1, 6446), 0.0)
    s.handle(DataAccepted(1, 1, ep("172.20.9.84:1")), 0.0)
    s.close("client gone")
    acts = s.handle(DataFinished(1, 10, 20, 1.0, error="reset"), 1.0)
    (log,) = logs(acts, "data_finished")
    assert log.fields["bytes_to_server"] == 10 and log.fields["result"] == "reset"
    assert s.handle(DataFinished(99, 0, 0, 0.0), 1.0) == []  # unknown conn: ignored


def test_mixed_family_port_refused() -> None:
    from ftpalg.core.session import Faces

    faces = Faces(F.client, F.server, F.server_face, ep("[2001:db8::5]:1"))
    s = new_session(faces)
    acts = s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\n", 0.0)
    assert sends(acts, CLIENT)[0].startswith(b"500 ") and sends(acts, SERVER) == []
    acts = s.receive(CLIENT, b"EPRT |1|172.20.9.84|4675|\r\n", 0.0)
    assert isinstance(acts[0], OpenListener) and acts[0].host == addr("2001:db8::5")
    out = s.handle(ListenerOpened(acts[0].listener, 4675), 0.0)
    assert sends(out, SERVER) == [
        b"EPRT |2|2001:0db8:0000:0000:0000:0000:0000:0005|4675|\r\n"
    ]  # family translation falls out of the EPRT format


def test_control_lines_wait_while_the_data_connection_is_dialed() -> None:
    s = new_session()
    s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r\n", 0.0)
    s.handle(ListenerOpened(1, 4675), 0.0)
    s.handle(DataAccepted(1, 7, ep("172.20.9.80:20")), 0.0)
    # the server already finished an empty file: its 226 must not overtake the data connection
    assert sends(s.receive(SERVER, b"226 Transfer complete.\r\n", 0.0), CLIENT) == []
    assert sends(s.receive(CLIENT, b"NOOP\r\n", 0.0), SERVER) == [b"NOOP\r\n"]
    acts = s.handle(DataConnected(7), 0.0)
    assert sends(acts, CLIENT) == [b"226 Transfer complete.\r\n"]


def test_failed_dial_releases_held_lines() -> None:
    s = new_session()
    s.receive(SERVER, b"229 (|||6446|)\r\n", 0.0)
    s.handle(ListenerOpened(1, 6446), 0.0)
    s.handle(DataAccepted(1, 2, ep("172.20.9.84:1")), 0.0)
    assert s.receive(CLIENT, b"RETR x\r\n", 0.0) == []  # passive: client lines wait
    acts = s.handle(DataFinished(2, 0, 0, 0.1, error="connect refused"), 0.0)
    assert sends(acts, SERVER) == [b"RETR x\r\n"]


def test_slowloris_line_timeout_even_while_bytes_trickle() -> None:
    s = new_session(policy=CorePolicy(line_timeout=60.0, idle_timeout=900.0))
    for t in range(59):  # one byte per second keeps the idle clock fresh...
        assert s.receive(CLIENT, b"X", float(t)) == []
    assert s.next_deadline() == 60.0  # ...but the line started at t=0 must end by t=60
    acts = s.handle(TimerFired(), 60.0)
    assert sends(acts, CLIENT)[0].startswith(b"421 Command line not completed")
    assert isinstance(acts[-1], CloseSession)


def test_completed_line_clears_the_line_clock() -> None:
    s = new_session(policy=CorePolicy(line_timeout=60.0, idle_timeout=900.0))
    s.receive(CLIENT, b"NO", 0.0)
    s.receive(CLIENT, b"OP\r\n", 30.0)
    assert s.next_deadline() == 930.0
    assert s.handle(TimerFired(), 100.0) == []


def test_unterminated_address_line_at_eof_is_dropped() -> None:
    s = new_session()
    s.receive(CLIENT, b"PORT 172,20,9,84,18,67\r", 0.0)
    acts = s.receive(CLIENT, b"", 0.0)
    assert sends(acts, SERVER) == [] and logs(acts, "unterminated_address_line_dropped")


def test_no_reply_after_the_clients_write_half_was_shut() -> None:
    s = new_session()
    acts = s.receive(SERVER, b"221 Bye\r\n", 0.0) + s.receive(SERVER, b"", 0.0)
    assert acts[-1] == ShutdownWrite(CLIENT)
    # shutdown of the gateway, then a bad line: ftpalg's own replies have nowhere to go
    acts = s.close("gateway shutting down", b"421 bye\r\n")
    assert sends(acts, CLIENT) == [] and isinstance(acts[-1], CloseSession)
