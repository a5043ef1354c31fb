"""`--inside-interface` confines diversion whatever port ftpalg listens on (issue 16, item 1).

The documented command listens on `0.0.0.0:21`; that wildcard IP_TRANSPARENT listener used
to make the table's `socket transparent 1` rule match every SYN to port 21 on every
interface, so a connection from the outside to an FTP server behind the gateway (a DMZ
server published by a DNAT rule) was taken over by ftpalg and answered with a 421. Here an
outside client logs in to such a server, with and without ftpalg running on the gateway.
"""

from __future__ import annotations

import pytest

from ftpalg.lab.alg import start_ftpalg
from ftpalg.lab.gateway import apply_routing
from ftpalg.lab.netns import Lab
from ftpalg.lab.servers import start_server
from tests.lab.conftest import start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

LOGIN = """
import ftplib, sys
ftp = ftplib.FTP()
print(ftp.connect(sys.argv[1], 21, timeout=10))
print(ftp.login(sys.argv[2], sys.argv[3]))
print(ftp.sendcmd("SYST"))
ftp.quit()
"""


def publish_dmz(lab: Lab) -> None:
    """The gateway's outside address, port 21, forwarded to the DMZ server inside."""
    a, i = lab.addresses, lab.ifnames
    lab.nft(
        "gw",
        "table ip dmz {\n"
        "\tchain pre {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f'\t\tiifname "{i.gw_outside}" ip daddr {a.gw_outside_v4} tcp dport 21'
        f" dnat to {a.client_v4}\n"
        "\t}\n"
        "}\n",
    )


def outside_login(lab: Lab, user: str, password: str) -> str:
    argv = ["python3", "-c", LOGIN, str(lab.addresses.gw_outside_v4), user, password]
    out = lab.run("srv", argv, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_inbound_ftp_to_a_dmz_server_is_not_diverted() -> None:
    lab = start_lab()
    try:
        apply_routing(lab)
        publish_dmz(lab)
        lab.server_role = "cli"  # the DMZ server lives on the inside network
        dmz = start_server(lab, "vsftpd", lab.addresses.client_v4)
        user, password = dmz.user or "anonymous", dmz.password or "lab@"
        before = outside_login(lab, user, password)
        assert "230" in before and "215" in before, before
        args = ["--listen", "0.0.0.0:21", "--inside-interface", lab.ifnames.gw_inside]
        alg = start_ftpalg(lab, args)
        after = outside_login(lab, user, password)
        assert after == before  # the DMZ server answered, not ftpalg
        assert not alg.named("session_opened"), alg.tail()
        seen = dmz.seen_clients()
        assert str(lab.addresses.server_v4) in seen, seen  # routed, not proxied
    finally:
        lab.close()


def test_a_missing_inside_interface_is_named_at_start(lab: Lab) -> None:
    """nft matches interfaces by name, also ones created later (wg0): ftpalg starts, and says
    which named interface does not exist (yet); a wildcard is not checked."""
    args = ["--listen", "0.0.0.0:21", "--inside-interface", "nosuch0"]
    alg = start_ftpalg(
        lab, [*args, "--inside-interface", lab.ifnames.gw_inside, "--inside-interface", "wg*"]
    )
    (warning,) = alg.named("inside_interface_missing")
    assert warning["interface"] == "nosuch0", warning
