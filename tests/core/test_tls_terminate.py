"""`tls = terminate` in the core (core/tls_terminate.py), as exact-sequence playbooks: ftpalg
answers AUTH (234, then StartTls), PBSZ and PROT itself and none reaches the server; the
plaintext a client sent behind AUTH is dropped unread; FEAT replies gain the TLS features;
`require_tls` refuses USER and PASS before AUTH; address lines are still rewritten."""

from __future__ import annotations

from ftpalg.core import tls_terminate as T
from ftpalg.core.messages import OpenListener, ProtectData, Send, StartTls
from ftpalg.core.observations import TlsTerminated
from ftpalg.core.policy import CorePolicy
from tests.core.harness import CLIENT, FACES_V4, SERVER, new_session
from tests.core.playbook import Playbook, client, server

F = FACES_V4
AUTH = b"AUTH TLS\r\n"
TERMINATE = CorePolicy(tls="terminate")
FEATURES = b" AUTH TLS\r\n PBSZ\r\n PROT\r\n"


def secured(pb: Playbook) -> Playbook:
    pb >> client(AUTH) << [Send(CLIENT, T.AUTH_OK), StartTls(CLIENT), TlsTerminated(AUTH)]
    return pb


def test_auth_pbsz_prot_are_answered_by_ftpalg_and_never_forwarded() -> None:
    pb = secured(Playbook(policy=TERMINATE))
    pb >> client(b"USER a\r\n") << [Send(SERVER, b"USER a\r\n")]  # now inside TLS
    pb >> client(b"PBSZ 0\r\n") << [Send(CLIENT, T.PBSZ_OK)]
    pb >> client(b"PROT P\r\n") << [Send(CLIENT, T.PROT_OK), ProtectData(True)]
    pb >> client(b"prot c\r\n") << [Send(CLIENT, T.PROT_OK), ProtectData(False)]
    pb >> client(b"PROT S\r\n") << [Send(CLIENT, T.PROT_UNSUPPORTED)]
    pb >> client(b"PROT X\r\n") << [Send(CLIENT, T.PROT_UNKNOWN)]
    pb >> client(AUTH) << [Send(CLIENT, T.AUTH_AGAIN)]  # twice: 503, nothing else


def test_prot_before_pbsz_or_auth_is_refused() -> None:
    pb = Playbook(policy=TERMINATE)
    pb >> client(b"PROT P\r\n") << [Send(CLIENT, T.NEEDS_AUTH)]
    pb >> client(b"PBSZ 0\r\n") << [Send(CLIENT, T.NEEDS_AUTH)]
    pb >> client(b"AUTH KERBEROS_V4\r\n") << [Send(CLIENT, T.AUTH_UNKNOWN)]
    secured(pb)
    pb >> client(b"PROT P\r\n") << [Send(CLIENT, T.NEEDS_PBSZ)]


def test_plaintext_behind_auth_is_dropped_unread() -> None:
    """A command injected in plain behind AUTH (CVE-2011-0411) never counts as protected."""
    pb = Playbook(policy=TERMINATE)
    both = AUTH + b"DELE x\r\nUSER"
    pb >> client(both) << [Send(CLIENT, T.AUTH_OK), StartTls(CLIENT), TlsTerminated(AUTH)]
    pb >> client(b"NOOP\r\n") << [Send(SERVER, b"NOOP\r\n")]  # the decrypted stream


def test_require_tls_refuses_a_login_in_clear() -> None:
    pb = Playbook(policy=CorePolicy(tls="terminate", require_tls=True))
    pb >> client(b"USER anonymous\r\n") << [Send(CLIENT, T.TLS_REQUIRED)]
    pb >> client(b"PASS secret\r\n") << [Send(CLIENT, T.TLS_REQUIRED)]
    # white space before the verb or a tab after it: still a login (servers may accept it)
    pb >> client(b"  PASS secret\r\n") << [Send(CLIENT, T.TLS_REQUIRED)]
    pb >> client(b"user\tanonymous\r\n") << [Send(CLIENT, T.TLS_REQUIRED)]
    pb >> client(b"SYST\r\n") << [Send(SERVER, b"SYST\r\n")]
    secured(pb)
    pb >> client(b"USER anonymous\r\n") << [Send(SERVER, b"USER anonymous\r\n")]


def test_feat_replies_gain_the_tls_features() -> None:
    pb = Playbook(policy=TERMINATE)
    pb >> client(b"FEAT\r\n") << [Send(SERVER, b"FEAT\r\n")]
    pb >> server(b"211-Features:\r\n") << [Send(CLIENT, b"211-Features:\r\n")]
    pb >> server(b" MDTM\r\n") << [Send(CLIENT, b" MDTM\r\n")]
    pb >> server(b"211 End\r\n") << [Send(CLIENT, FEATURES + b"211 End\r\n")]
    pb >> server(b"200 later\r\n") << [Send(CLIENT, b"200 later\r\n")]  # FEAT answered
    pb >> client(b"FEAT\r\n") << [Send(SERVER, b"FEAT\r\n")]
    listing = b"211-Features:\r\n" + FEATURES + b"211 End\r\n"
    pb >> server(b"500 Unknown command.\r\n") << [Send(CLIENT, listing)]


def test_feat_lists_a_feature_once_when_the_server_lists_it_itself() -> None:
    """tls_upstream: the server speaks TLS too, and its FEAT has AUTH TLS, PBSZ, PROT."""
    pb = Playbook(policy=TERMINATE)
    pb >> client(b"FEAT\r\n") << [Send(SERVER, b"FEAT\r\n")]
    pb >> server(b"211-Features:\r\n") << [Send(CLIENT, b"211-Features:\r\n")]
    for line in (b" AUTH SSL\r\n", b" auth tls\r\n", b" PBSZ\r\n", b" MDTM\r\n"):
        pb >> server(line) << [Send(CLIENT, line)]
    pb >> server(b"211 End\r\n") << [Send(CLIENT, b" PROT\r\n211 End\r\n")]
    pb >> client(b"FEAT\r\n") << [Send(SERVER, b"FEAT\r\n")]  # the next one: all again
    pb >> server(b"211-Features:\r\n") << [Send(CLIENT, b"211-Features:\r\n")]
    pb >> server(b"211 End\r\n") << [Send(CLIENT, FEATURES + b"211 End\r\n")]


def test_address_lines_are_still_rewritten() -> None:
    pb = secured(Playbook(policy=TERMINATE))
    pasv = b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"
    actions = pb.session.receive(SERVER, pasv, 0.0)
    assert isinstance(actions[0], OpenListener) and actions[0].host == F.server_face.host


def test_implicit_ftps_starts_secured() -> None:
    """A `listen_implicit` connection is TLS from its first byte (the adapter's handshake):
    no AUTH, PBSZ implied; PROT answered; a later AUTH is a second one."""
    session = new_session(policy=CorePolicy(tls="terminate", require_tls=True))
    session.tls.implicit()
    assert session.receive(CLIENT, b"USER a\r\n", 0.0) == [Send(SERVER, b"USER a\r\n")]
    prot = session.receive(CLIENT, b"PROT C\r\n", 0.0)
    assert prot == [Send(CLIENT, T.PROT_OK), ProtectData(False)]
    assert session.receive(CLIENT, AUTH, 0.0) == [Send(CLIENT, T.AUTH_AGAIN)]
