"""Reverse mode's two policy knobs, as exact-sequence playbooks (tests/core/playbook.py):

- `strict_data_ports`: a data listener is always inside `data_ports` (the range the operator's
  firewall opens); an announced port outside it is never tried. Without it (transparent mode)
  the announced port comes first, as the kernel helper keeps it.
- `announce`: the address written into a 227 reply (a DNAT in front of the gateway), while
  the listener stays on the face the client really reaches; a PORT is not affected.
"""

from __future__ import annotations

from ipaddress import ip_address

from ftpalg.core.messages import ListenerOpened, OpenListener, Send
from ftpalg.core.observations import Rewritten
from ftpalg.core.policy import CorePolicy
from ftpalg.core.ports import PortChooser
from ftpalg.core.wire import Kind
from tests.core.harness import CLIENT, FACES_V4, SERVER, ScriptedRandom, ep
from tests.core.playbook import Playbook, client, server

F = FACES_V4
PASV_IN = b"227 Entering Passive Mode (172,20,9,80,195,80).\r\n"  # port 50000
RANGE = (45000, 45009)
ANNOUNCED = ip_address("192.0.2.7")


def passive_open(port: int) -> OpenListener:
    return OpenListener(
        1, F.server_face.host, port, F.client.host, ep("172.20.9.80:50000"), F.client_face.host
    )


def test_strict_data_ports_never_try_an_announced_port_outside_the_range() -> None:
    policy = CorePolicy(data_ports=RANGE, strict_data_ports=True)
    pb = Playbook(policy=policy, rng=ScriptedRandom(45003, 45007))
    pb >> server(PASV_IN) << [passive_open(45003)]
    out = b"227 Entering Passive Mode (198,51,100,80,175,203).\r\n"  # 45003
    listen = ep("198.51.100.80:45003")
    target = ep("172.20.9.80:50000")
    rewritten = Rewritten(Kind.PASV, PASV_IN, out, listen, target, 3, 3)
    pb >> ListenerOpened(1, 45003) << [Send(CLIENT, out), rewritten]


def test_strict_data_ports_keep_an_announced_port_inside_the_range() -> None:
    chooser = PortChooser(45005, RANGE, ScriptedRandom(), 16, strict=True)
    assert chooser.first == 45005  # no random number drawn (ScriptedRandom would fail)


def test_without_strict_the_announced_port_comes_first() -> None:
    pb = Playbook(policy=CorePolicy(data_ports=RANGE), rng=ScriptedRandom())
    pb >> server(PASV_IN) << [passive_open(50000)]


def test_strict_retries_stay_in_the_range_and_never_repeat() -> None:
    chooser = PortChooser(50000, RANGE, ScriptedRandom(45001, 45001, 45002), 16, strict=True)
    assert (chooser.first, chooser.next_port()) == (45001, 45002)


def test_announce_is_written_into_the_227_and_the_listener_stays_on_the_face() -> None:
    policy = CorePolicy(announce=(ip_address("2001:db8::7"), ANNOUNCED))
    pb = Playbook(policy=policy)
    pb >> server(PASV_IN) << [passive_open(50000)]
    out = b"227 Entering Passive Mode (192,0,2,7,195,80).\r\n"
    listen = ep("198.51.100.80:50000")  # the real face: what a DNAT in front delivers to
    rewritten = Rewritten(Kind.PASV, PASV_IN, out, listen, ep("172.20.9.80:50000"), -2, -2)
    pb >> ListenerOpened(1, 50000) << [Send(CLIENT, out), rewritten]


def test_announce_does_not_touch_a_port_command() -> None:
    pb = Playbook(policy=CorePolicy(announce=(ANNOUNCED,)))
    port_in = b"PORT 172,20,9,84,18,67\r\n"
    port_out = b"PORT 203,0,113,5,18,67\r\n"
    target = ep("172.20.9.84:4675")
    opened = OpenListener(1, F.client_face.host, 4675, F.server.host, target, F.server_face.host)
    pb >> client(port_in) << [opened]
    rewritten = Rewritten(Kind.PORT, port_in, port_out, ep("203.0.113.5:4675"), target, 0, 0)
    pb >> ListenerOpened(1, 4675) << [Send(SERVER, port_out), rewritten]
