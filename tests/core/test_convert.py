"""Data-mode conversion in the core (core/convert.py, docs/conversion.md), as exact-sequence
playbooks (tests/core/playbook.py). The shared invariant checker models a gateway that only
rewrites (every reply the client gets came from the server, every command the server gets
came from the client), which a converting gateway deliberately is not: these playbooks run
with it switched off (`converting`); under the default policy every other playbook and the
generated runs keep it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ftpalg.core.messages import (
    CloseListener,
    DataAccepted,
    DataDialed,
    DataFinished,
    DialData,
    DialFailed,
    JoinData,
    ListenerOpened,
    OpenListener,
    RejectData,
    Send,
    TimerFired,
)
from ftpalg.core.observations import Converted, DataEnded, DataMode
from ftpalg.core.policy import CorePolicy
from tests.core.harness import CLIENT, FACES_V4, SERVER, ScriptedRandom, ep
from tests.core.playbook import Playbook, client, server

F = FACES_V4
PORT = b"PORT 172,20,9,84,156,64\r\n"  # the client's 40000
PORT_200 = Send(CLIENT, b"200 PORT command successful.\r\n")
RETR = b"RETR f\r\n"
EPSV_229 = b"229 Entering Extended Passive Mode (|||50000|).\r\n"
TO_SERVER = ep("172.20.9.80:50000")
FROM_CLIENT_FACE = ep("203.0.113.5:0")
FROM_SERVER_FACE = ep("198.51.100.80:0")
CLIENT_DATA = ep("172.20.9.84:40000")


class _Off:
    def step(self, *args: object) -> None: ...

    def check_state(self, *args: object) -> None: ...


def converting(mode: str, *ports: int) -> Playbook:
    pb = Playbook(policy=CorePolicy(data_policy=mode), rng=ScriptedRandom(*ports))
    pb.checker = _Off()  # type: ignore[assignment]  # see the module docstring
    pb >> server(b"220 hi\r\n") << [Send(CLIENT, b"220 hi\r\n")]
    return pb


def ended(conn: int, mode: DataMode, to_client: int, to_server: int) -> DataEnded:
    """The converted RETR's data connection, after the server's `226 done` (its final reply)."""
    return DataEnded(
        conn, mode, to_client, to_server, 1.0, "ok", None, "RETR", b"f", "A", F.client, b"226 done"
    )


def active_to_passive_until_retr(pb: Playbook) -> None:
    pb >> client(PORT) << [PORT_200]
    pb >> client(RETR) << [Send(SERVER, b"EPSV\r\n")]
    pb >> server(EPSV_229) << [DialData(1, TO_SERVER, FROM_CLIENT_FACE)]
    pb >> DataDialed(1, 7) << [DialData(2, CLIENT_DATA, FROM_SERVER_FACE)]


def test_port_becomes_epsv_and_the_client_is_dialed_before_its_150() -> None:
    pb = converting("passive")
    active_to_passive_until_retr(pb)
    retr = Send(SERVER, RETR)
    pb >> DataDialed(2, 8) << [retr, Converted("RETR", "PORT", "EPSV"), JoinData(8, 7)]
    both = [Send(CLIENT, b"150 ok\r\n"), Send(CLIENT, b"226 done\r\n")]
    pb >> server(b"150 ok\r\n226 done\r\n") << both
    pb.at(1.0) >> DataFinished(8, 0, 5, 1.0) << [ended(8, DataMode.ACTIVE, 5, 0)]
    assert not pb.session.conv.active  # type: ignore[union-attr]


def test_a_converted_transfer_ended_before_its_550_reports_the_550() -> None:
    pb = converting("passive")
    active_to_passive_until_retr(pb)
    retr = Send(SERVER, RETR)
    pb >> DataDialed(2, 8) << [retr, Converted("RETR", "PORT", "EPSV"), JoinData(8, 7)]
    pb >> server(b"150 ok\r\n") << [Send(CLIENT, b"150 ok\r\n")]
    pb.at(1.0) >> DataFinished(8, 0, 5, 1.0) << []  # waits for the transfer's final reply
    gone = replace(ended(8, DataMode.ACTIVE, 5, 0), result="550 gone", reply=b"550 gone")
    pb >> server(b"550 gone\r\n") << [gone, Send(CLIENT, b"550 gone\r\n")]


def test_epsv_refused_falls_back_to_pasv_remembered_for_the_session() -> None:
    pb = converting("passive")
    pb >> client(PORT) << [PORT_200]
    pb >> client(RETR) << [Send(SERVER, b"EPSV\r\n")]
    pb >> server(b"500 What?\r\n") << [Send(SERVER, b"PASV\r\n")]
    pasv = b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"
    pb >> server(pasv) << [DialData(1, TO_SERVER, FROM_CLIENT_FACE)]
    pb >> DataDialed(1, 7) << [DialData(2, CLIENT_DATA, FROM_SERVER_FACE)]
    retr = Send(SERVER, RETR)
    pb >> DataDialed(2, 8) << [retr, Converted("RETR", "PORT", "PASV"), JoinData(8, 7)]
    pb >> server(b"226 done\r\n") << [Send(CLIENT, b"226 done\r\n")]
    pb >> client(PORT) << [PORT_200]
    pb >> client(RETR) << [Send(SERVER, b"PASV\r\n")]  # EPSV is not asked again


def test_explicit_epsv_refused_answers_the_transfer_with_425() -> None:
    pb = converting("EPSV")
    pb >> client(PORT) << [PORT_200]
    pb >> client(RETR) << [Send(SERVER, b"EPSV\r\n")]
    reply = b"425 Can't open data connection: the server refused EPSV (502).\r\n"
    pb >> server(b"502 No.\r\n") << [Send(CLIENT, reply)]
    pb >> client(b"NOOP\r\n") << [Send(SERVER, b"NOOP\r\n")]  # the session goes on


def test_late_replies_keep_their_order_before_ftpalgs_own() -> None:
    pb = converting("passive")
    pb >> client(b"TYPE I\r\n" + PORT + RETR) << [Send(SERVER, b"TYPE I\r\n")]
    out = [Send(CLIENT, b"200 Type I.\r\n"), PORT_200, Send(SERVER, b"EPSV\r\n")]
    pb >> server(b"200 Type I.\r\n") << out


def test_a_second_port_replaces_the_first() -> None:
    pb = converting("passive")
    pb >> client(PORT) << [PORT_200]
    pb >> client(b"PORT 172,20,9,84,156,65\r\n") << [PORT_200]
    pb >> client(RETR) << [Send(SERVER, b"EPSV\r\n")]
    pb >> server(EPSV_229) << [DialData(1, TO_SERVER, FROM_CLIENT_FACE)]
    pb >> DataDialed(1, 7) << [DialData(2, ep("172.20.9.84:40001"), FROM_SERVER_FACE)]


def test_abor_during_the_join_answers_426_and_nothing_stays_open() -> None:
    pb = converting("passive")
    pb >> client(PORT) << [PORT_200]
    pb >> client(RETR) << [Send(SERVER, b"EPSV\r\n")]
    pb >> server(EPSV_229) << [DialData(1, TO_SERVER, FROM_CLIENT_FACE)]
    pb >> DataDialed(1, 7) << [DialData(2, CLIENT_DATA, FROM_SERVER_FACE)]
    aborted = Send(CLIENT, b"426 Connection closed; transfer aborted.\r\n")
    pb >> client(b"ABOR\r\n") << [aborted, RejectData(7), Send(SERVER, b"ABOR\r\n")]
    pb >> DataDialed(2, 8) << [RejectData(8)]  # the dial that was under way
    pb >> server(b"225 No transfer.\r\n") << [Send(CLIENT, b"225 No transfer.\r\n")]


def test_abor_while_ftpalgs_own_command_is_answered_swallows_its_reply() -> None:
    pb = converting("passive")
    pb >> client(PORT) << [PORT_200]
    pb >> client(RETR) << [Send(SERVER, b"EPSV\r\n")]
    aborted = Send(CLIENT, b"426 Connection closed; transfer aborted.\r\n")
    pb >> client(b"ABOR\r\n") << [aborted, Send(SERVER, b"ABOR\r\n")]
    pb >> server(EPSV_229 + b"225 No transfer.\r\n") << [Send(CLIENT, b"225 No transfer.\r\n")]


def test_a_failed_dial_to_the_client_is_a_425_and_the_server_never_sees_the_transfer() -> None:
    pb = converting("passive")
    active_to_passive_until_retr(pb)
    reply = b"425 Can't open data connection: connect failed (refused).\r\n"
    pb >> DialFailed(2, "refused") << [Send(CLIENT, reply), RejectData(7)]
    pb >> client(b"NOOP\r\n") << [Send(SERVER, b"NOOP\r\n")]


def passive_to_active_until_retr(pb: Playbook) -> None:
    open_client = OpenListener(
        1, F.server_face.host, 45000, F.client.host, F.server, F.client_face.host
    )
    pb >> client(b"PASV\r\n") << [open_client]
    shown = b"227 Entering Passive Mode (198,51,100,80,175,200).\r\n"
    pb >> ListenerOpened(1, 45000) << [Send(CLIENT, shown)]
    pb >> DataAccepted(1, 5, ep("172.20.9.84:33333")) << [CloseListener(1)]
    open_server = OpenListener(
        2, F.client_face.host, 45001, F.server.host, F.client, F.server_face.host
    )
    pb >> client(RETR) << [open_server]
    pb >> ListenerOpened(2, 45001) << [Send(SERVER, b"EPRT |1|203.0.113.5|45001|\r\n")]


def test_pasv_becomes_eprt_and_the_226_waits_for_the_join() -> None:
    pb = converting("active", 45000, 45001)
    passive_to_active_until_retr(pb)
    retr = Send(SERVER, RETR)
    pb >> server(b"200 EPRT ok.\r\n") << [retr, Converted("RETR", "PASV", "EPRT")]
    pb >> server(b"150 ok\r\n226 done\r\n") << [Send(CLIENT, b"150 ok\r\n")]  # 226 held
    joined = [CloseListener(2), JoinData(5, 9), Send(CLIENT, b"226 done\r\n")]
    pb >> DataAccepted(2, 9, ep("172.20.9.80:20")) << joined
    pb.at(1.0) >> DataFinished(5, 0, 0, 1.0) << [ended(5, DataMode.PASSIVE, 0, 0)]


def test_upstream_425_reaches_the_client_and_nothing_is_left_listening() -> None:
    pb = converting("active", 45000, 45001)
    passive_to_active_until_retr(pb)
    retr = Send(SERVER, RETR)
    pb >> server(b"200 EPRT ok.\r\n") << [retr, Converted("RETR", "PASV", "EPRT")]
    out = [RejectData(5), CloseListener(2), Send(CLIENT, b"425 No data.\r\n")]
    pb >> server(b"425 No data.\r\n") << out


def test_a_thief_on_the_client_listener_is_refused() -> None:
    pb = converting("active", 45000)
    open_client = OpenListener(
        1, F.server_face.host, 45000, F.client.host, F.server, F.client_face.host
    )
    pb >> client(b"EPSV\r\n") << [open_client]
    shown = b"229 Entering Extended Passive Mode (|||45000|).\r\n"
    pb >> ListenerOpened(1, 45000) << [Send(CLIENT, shown)]
    out = pb.session.handle(DataAccepted(1, 5, ep("192.0.2.9:1")), 0.0)
    assert out[0] == RejectData(5)


def test_the_client_policy_changes_nothing() -> None:
    pb = Playbook()
    assert pb.session.conv is None


def test_the_config_offers_exactly_the_core_policies() -> None:
    from ftpalg.core.convert import POLICIES
    from ftpalg.ops.config import DATA_POLICIES

    assert DATA_POLICIES == POLICIES


def test_abor_pipelined_behind_the_transfer_cancels_it_at_once() -> None:
    pb = converting("passive")
    pb >> client(PORT) << [PORT_200]
    aborted = Send(CLIENT, b"426 Connection closed; transfer aborted.\r\n")
    out = [Send(SERVER, b"EPSV\r\n"), aborted, Send(SERVER, b"ABOR\r\n")]
    pb >> client(RETR + b"ABOR\r\n") << out
    pb >> server(EPSV_229) << []  # the answer to ftpalg's own EPSV: swallowed, nothing dialed


def test_data_policy_from_file_and_flag_reaches_the_core_policy(tmp_path: Path) -> None:
    from ftpalg.ops.config import ConfigError, build_config
    from ftpalg.proxy.gateway import core_policy

    path = tmp_path / "ftpalg.toml"
    path.write_text('data_policy = "EPSV"\n')
    config, _ = build_config(["--config", str(path)])
    assert core_policy(config).data_policy == "EPSV"
    config, _ = build_config(["--config", str(path), "--data-policy", "active"])
    assert core_policy(config).data_policy == "active"
    path.write_text('data_policy = "epsv"\n')  # the names are exact, as in mod_proxy
    with pytest.raises(ConfigError):
        build_config(["--config", str(path)])


def test_an_unused_client_listener_expires_like_an_expectation() -> None:
    pb = converting("active", 45000)
    open_client = OpenListener(
        1, F.server_face.host, 45000, F.client.host, F.server, F.client_face.host
    )
    pb >> client(b"PASV\r\n") << [open_client]
    shown = b"227 Entering Passive Mode (198,51,100,80,175,200).\r\n"
    pb >> ListenerOpened(1, 45000) << [Send(CLIENT, shown)]
    assert pb.session.next_deadline() == 300.0
    pb.at(300.0) >> TimerFired() << [CloseListener(1)]
    pb >> client(RETR) << [Send(SERVER, RETR)]  # no leg: the server answers it
