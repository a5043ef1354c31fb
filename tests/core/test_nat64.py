"""RFC 6384 translation in the core (core/nat64.py, docs/nat64.md): exact sequences for an
IPv6 client and an IPv4 server. The shared invariant checker models the plain ALG, which a
translating gateway deliberately is not (it answers ALGS, replaces a refused EPSV): these
tests compare the whole action lists themselves; tests/core/test_nat64_properties.py runs
generated sessions against a scripted IPv4 server."""

from __future__ import annotations

import random
from ipaddress import ip_address

from ftpalg.core.messages import (
    Action,
    ConnectData,
    DataAccepted,
    DataReceived,
    Event,
    Faces,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    Send,
)
from ftpalg.core.observations import DataStarted, RewriteImpossible, Rewritten, Translated64
from ftpalg.core.policy import CorePolicy
from ftpalg.core.session import Session
from tests.core.harness import CLIENT, FACES_6TO4, FACES_V6, SERVER, ep

F = FACES_6TO4
SYNTH = F.server_face.host  # the address the client connected to (64:ff9b::... in NAT64)
GREETING = b"220 IPv4 only\r\n"


class Run:
    """A translated session; `feed` returns the actions, `sends` only what went where."""

    def __init__(self, policy: CorePolicy | None = None, faces: Faces = F) -> None:
        self.session = Session(faces, policy or CorePolicy(), 0.0, random.Random(1))
        assert self.sends(self.server(GREETING)) == [(CLIENT, GREETING)]

    def event(self, event: Event) -> list[Action]:
        return self.session.handle(event, 1.0)

    def client(self, data: bytes) -> list[Action]:
        return self.event(DataReceived(CLIENT, data))

    def server(self, data: bytes) -> list[Action]:
        return self.event(DataReceived(SERVER, data))

    @staticmethod
    def sends(actions: list[Action]) -> list[tuple[object, bytes]]:
        return [(a.side, a.data) for a in actions if isinstance(a, Send)]


def listener(actions: list[Action]) -> OpenListener:
    (opened,) = [a for a in actions if isinstance(a, OpenListener)]
    return opened


def test_a_cross_family_session_is_translated_unless_converting_or_switched_off() -> None:
    assert Run().session.nat is not None
    assert Run(CorePolicy(nat64=False)).session.nat is None
    assert Run(CorePolicy(data_policy="passive")).session.nat is None  # convert.py decides
    assert Run(faces=FACES_V6).session.nat is None


def test_epsv_2_goes_upstream_bare_and_a_229_is_rewritten_as_usual() -> None:
    r = Run()
    assert r.sends(r.client(b"EPSV 2\r\n")) == [(SERVER, b"EPSV\r\n")]
    out = r.server(b"229 Entering Extended Passive Mode (|||50000|).\r\n")
    opened = listener(out)
    assert (opened.host, opened.peer) == (SYNTH, F.client.host)
    assert (opened.target, opened.source) == (ep("172.20.9.80:50000"), F.client_face.host)
    out = r.event(ListenerOpened(opened.listener, 50000))
    assert r.sends(out) == [(CLIENT, b"229 Entering Extended Passive Mode (|||50000|).\r\n")]
    # the client's data connection is joined to the server over IPv4
    out = r.event(DataAccepted(opened.listener, 7, ep("[2001:db8::1]:41000")))
    dial = [a for a in out if isinstance(a, ConnectData)]
    assert dial == [ConnectData(7, ep("172.20.9.80:50000"), ep("203.0.113.5:0"))]
    assert any(isinstance(a, DataStarted) for a in out)


def test_a_refused_epsv_becomes_pasv_and_the_227_a_229_remembered_for_the_session() -> None:
    r = Run()
    assert r.sends(r.client(b"EPSV\r\n")) == [(SERVER, b"EPSV\r\n")]
    out = r.server(b"522 Bad network protocol.\r\n")
    assert r.sends(out) == [(SERVER, b"PASV\r\n")]  # the refusal never reaches the client
    assert Translated64("EPSV", "PASV") in out
    out = r.server(b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n")
    opened = listener(out)
    assert (opened.host, opened.target) == (SYNTH, ep("172.20.9.80:50000"))
    out = r.event(ListenerOpened(opened.listener, 50001))
    assert r.sends(out) == [(CLIENT, b"229 Entering Extended Passive Mode (|||50001|).\r\n")]
    assert next(a for a in out if isinstance(a, Rewritten)).listen == ep("[2001:db8:1::80]:50001")
    # remembered: the next EPSV goes upstream as PASV at once
    out = r.client(b"EPSV\r\n")
    assert r.sends(out) == [(SERVER, b"PASV\r\n")]
    assert Translated64("EPSV", "PASV") in out


def test_commands_behind_an_epsv_wait_until_its_answer_is_known() -> None:
    r = Run()
    assert r.sends(r.client(b"EPSV\r\nRETR f\r\n")) == [(SERVER, b"EPSV\r\n")]
    # the RETR goes upstream only after the PASV that replaces the refused EPSV
    assert r.sends(r.server(b"500 EPSV not understood\r\n")) == [
        (SERVER, b"PASV\r\n"),
        (SERVER, b"RETR f\r\n"),
    ]


def test_a_multi_line_refusal_is_swallowed_whole() -> None:
    r = Run()
    r.client(b"EPSV\r\n")
    assert r.sends(r.server(b"500-no such\r\n")) == []
    assert r.sends(r.server(b"500 command\r\n")) == [(SERVER, b"PASV\r\n")]


def test_a_refused_pasv_answers_the_epsv() -> None:
    r = Run()
    r.client(b"EPSV\r\n")
    r.server(b"502 not implemented\r\n")
    assert r.sends(r.server(b"425 no passive\r\n")) == [(CLIENT, b"425 no passive\r\n")]
    assert r.sends(r.client(b"NOOP\r\n")) == [(SERVER, b"NOOP\r\n")]  # nothing waits


def test_eprt_2_goes_upstream_as_eprt_1_then_port_when_refused_remembered() -> None:
    r = Run()
    out = r.client(b"EPRT |2|2001:db8::1|41000|\r\n")
    opened = listener(out)
    assert (opened.host, opened.peer) == (F.client_face.host, F.server.host)
    assert (opened.target, opened.source) == (ep("[2001:db8::1]:41000"), SYNTH)
    out = r.event(ListenerOpened(opened.listener, 50002))
    assert r.sends(out) == [(SERVER, b"EPRT |1|203.0.113.5|50002|\r\n")]
    assert r.sends(r.client(b"LIST\r\n")) == []  # waits: the EPRT may be refused
    out = r.server(b"500 EPRT not understood\r\n")
    assert r.sends(out) == [(SERVER, b"PORT 203,0,113,5,195,82\r\n"), (SERVER, b"LIST\r\n")]
    assert Translated64("EPRT", "PORT") in out
    assert r.sends(r.server(b"200 PORT ok\r\n")) == [(CLIENT, b"200 PORT ok\r\n")]
    # remembered: the next EPRT goes upstream as PORT once its listener is bound
    opened = listener(r.client(b"EPRT |2|2001:db8::1|41001|\r\n"))
    out = r.event(ListenerOpened(opened.listener, 50003))
    assert r.sends(out) == [(SERVER, b"PORT 203,0,113,5,195,83\r\n")]
    assert Translated64("EPRT", "PORT") in out


def test_an_accepted_eprt_releases_what_waited() -> None:
    r = Run()
    opened = listener(r.client(b"EPRT |2|2001:db8::1|41000|\r\nLIST\r\n"))
    out = r.event(ListenerOpened(opened.listener, 50002))
    assert r.sends(out) == [(SERVER, b"EPRT |1|203.0.113.5|50002|\r\n")]
    out = r.server(b"200 EPRT ok\r\n")
    assert r.sends(out) == [(CLIENT, b"200 EPRT ok\r\n"), (SERVER, b"LIST\r\n")]


def test_the_clients_own_pasv_gets_the_servers_ipv4_address_with_ftpalgs_port() -> None:
    r = Run()
    assert r.sends(r.client(b"PASV\r\n")) == [(SERVER, b"PASV\r\n")]
    opened = listener(r.server(b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"))
    assert opened.host == SYNTH
    out = r.event(ListenerOpened(opened.listener, 50001))
    assert r.sends(out) == [(CLIENT, b"227 Entering Passive Mode (172,20,9,80,195,81).\r\n")]


def test_algs_is_answered_by_ftpalg_and_switches_the_translation() -> None:
    r = Run()
    enabled = b"216 EPSVEPRT FTP ALG enabled.\r\n"
    disabled = b"216 NONE FTP ALG disabled.\r\n"
    assert r.sends(r.client(b"ALGS STATUS64\r\n")) == [(CLIENT, enabled)]
    assert r.sends(r.client(b"algs DISABLE64\r\n")) == [(CLIENT, disabled)]
    assert r.sends(r.client(b"ALGS STATUS64\r\n")) == [(CLIENT, disabled)]
    # off: EPSV and LPSV pass as they are, the server's refusal reaches the client
    assert r.sends(r.client(b"EPSV 2\r\n")) == [(SERVER, b"EPSV 2\r\n")]
    refusal = b"522 Bad network protocol.\r\n"
    assert r.sends(r.server(refusal)) == [(CLIENT, refusal)]
    assert r.sends(r.client(b"LPSV\r\n")) == [(SERVER, b"LPSV\r\n")]
    r.server(b"500 Unknown command.\r\n")
    assert r.sends(r.client(b"ALGS ENABLE64\r\n")) == [(CLIENT, enabled)]
    assert r.sends(r.client(b"ALGS\r\n")) == [
        (CLIENT, b"501 ALGS takes STATUS64, ENABLE64 or DISABLE64.\r\n")
    ]


def test_off_a_227_still_cannot_name_the_ipv6_face() -> None:
    r = Run()
    r.client(b"ALGS DISABLE64\r\n")
    r.client(b"PASV\r\n")
    line = b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"
    out = r.server(line)
    assert r.sends(out) == [(CLIENT, line)]
    assert any(isinstance(a, RewriteImpossible) for a in out)


def test_replies_keep_their_order_around_commands_ftpalg_answers() -> None:
    r = Run()
    out = r.client(b"NOOP\r\nALGS STATUS64\r\nLPSV\r\nEPSV 1\r\n")
    assert r.sends(out) == [(SERVER, b"NOOP\r\n")]  # the rest waits for the NOOP's reply
    assert r.sends(r.server(b"200 NOOP ok\r\n")) == [
        (CLIENT, b"200 NOOP ok\r\n"),
        (CLIENT, b"216 EPSVEPRT FTP ALG enabled.\r\n"),
        (CLIENT, b"502 LPSV not implemented; use EPRT or EPSV.\r\n"),
        (CLIENT, b"522 Network protocol not supported, use (2).\r\n"),
    ]


def test_epsv_all_is_passed_on_with_the_servers_answer() -> None:
    r = Run()
    assert r.sends(r.client(b"EPSV ALL\r\n")) == [(SERVER, b"EPSV ALL\r\n")]
    assert r.sends(r.server(b"500 no\r\n")) == [(CLIENT, b"500 no\r\n")]


def test_telnet_option_negotiation_is_refused_and_not_relayed() -> None:
    r = Run()
    out = r.client(b"\xff\xfb\x18NOOP\r\n")  # IAC WILL TERMINAL-TYPE
    assert r.sends(out) == [(CLIENT, b"\xff\xfe\x18"), (SERVER, b"NOOP\r\n")]
    out = r.server(b"\xff\xfd\x01\xff\xfc\x03200 ok\r\n")  # IAC DO ECHO, IAC WONT SGA
    assert r.sends(out) == [(SERVER, b"\xff\xfc\x01"), (CLIENT, b"200 ok\r\n")]
    # nothing but negotiation: no line at all; an ABOR's IP/Synch and IAC IAC stay
    assert r.sends(r.client(b"\xff\xfd\x01\r\n")) == [(CLIENT, b"\xff\xfc\x01")]
    abor = b"\xff\xf4\xff\xf2ABOR\r\n"
    assert r.sends(r.client(abor)) == [(SERVER, abor)]
    r.server(b"226 aborted\r\n")
    assert r.sends(r.client(b"CWD a\xff\xffb\r\n")) == [(SERVER, b"CWD a\xff\xffb\r\n")]


def test_after_auth_the_channel_is_opaque_and_nothing_is_translated() -> None:
    r = Run()
    assert r.sends(r.client(b"AUTH TLS\r\n")) == [(SERVER, b"AUTH TLS\r\n")]
    r.server(b"234 go ahead\r\n")
    hello = b"\x16\x03\x01EPSV\r\nALGS STATUS64\r\n"
    assert r.sends(r.client(hello)) == [(SERVER, hello)]


def test_a_refused_eprt_whose_listener_is_gone_passes_the_refusal() -> None:
    r = Run()
    opened = listener(r.client(b"EPRT |2|2001:db8::1|41000|\r\n"))
    r.event(ListenerOpened(opened.listener, 50002))
    r.session.expectation = None  # e.g. expired meanwhile
    assert r.sends(r.server(b"500 no\r\n")) == [(CLIENT, b"500 no\r\n")]


def test_no_free_port_for_the_229_still_answers_the_epsv() -> None:
    r = Run(CorePolicy(port_tries=1))
    r.client(b"EPSV\r\n")
    r.server(b"500 no\r\n")
    opened = listener(r.server(b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"))
    out = r.event(ListenerFailed(opened.listener, "in use"))
    out += r.event(ListenerFailed(opened.listener, "in use"))
    replies = [d for side, d in r.sends(out) if side is CLIENT]
    assert replies == [b"425 Can't open data connection: no free port on the gateway.\r\n"]
    assert r.sends(r.client(b"NOOP\r\n")) == [(SERVER, b"NOOP\r\n")]


def test_the_loose_policy_dials_the_address_the_227_names() -> None:
    r = Run(CorePolicy(loose=True))
    r.client(b"EPSV\r\n")
    r.server(b"500 no\r\n")
    opened = listener(r.server(b"227 Entering Passive Mode (172,20,9,99,195,80).\r\n"))
    assert opened.target.host == ip_address("172.20.9.99")


def test_ipv4_address_commands_from_the_ipv6_client_are_refused() -> None:
    r = Run()
    for line in (b"PORT 172,20,9,84,156,64\r\n", b"EPRT |1|172.20.9.84|40000|\r\n"):
        replies = r.sends(r.client(line))
        assert len(replies) == 1 and replies[0][0] is CLIENT, replies
        assert replies[0][1].startswith(b"501 "), replies  # never reaches the IPv4 server
