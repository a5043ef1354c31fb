"""`Gateway.dial` on loopback with real sockets: a source port that cannot be used falls back
to any port (in use at bind: EADDRINUSE; the 4-tuple taken at connect: EADDRNOTAVAIL), a
refusal still says why, a far end that never answers times out. Each runs on the stdlib
loop and on uvloop; addresses are 127.0.0.x only."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from ipaddress import IPv4Address

import pytest

from ftpalg.core import policy as P
from ftpalg.core.messages import Endpoint
from ftpalg.ops.config import Config
from ftpalg.ops.events import SessionRefused
from ftpalg.proxy.gateway import Gateway
from ftpalg.proxy.sockets import make_dial_socket, make_listener
from tests.proxy.rig import (
    Runner,
    recording_observer,
    recv_all,
    run_fixture,  # noqa: F401  (the `run` fixture)
    until,
)

pytestmark = pytest.mark.timeout(60)
TARGET = "127.0.0.1"
SOURCE = "127.0.0.3"  # the dial's source face (a local address: no transparency needed)


def ep(host: str, port: int) -> Endpoint:
    return Endpoint(IPv4Address(host), port)


def target_listener() -> socket.socket:
    sock = socket.create_server((TARGET, 0))
    sock.setblocking(False)
    return sock


async def check_connected(sock: socket.socket, target: socket.socket, taken: int) -> None:
    """`sock` is connected to `target` from SOURCE, from another port than `taken`."""
    loop = asyncio.get_running_loop()
    host, port = sock.getsockname()
    assert host == SOURCE and port not in (0, taken)
    accepted, peer = await loop.sock_accept(target)
    with accepted:
        assert peer == (host, port)
        await loop.sock_sendall(sock, b"ok")
        assert await loop.sock_recv(accepted, 2) == b"ok"


def test_a_source_port_in_use_at_bind_falls_back_to_any_port(run: Runner) -> None:
    async def main() -> None:
        gateway = Gateway(Config(), asyncio.get_running_loop(), recording_observer()[0])
        with (
            target_listener() as target,
            make_listener(IPv4Address(SOURCE), 0, transparent=False) as holder,
        ):
            taken = holder.getsockname()[1]  # a listener holds SOURCE:taken
            with pytest.raises(OSError) as exc:
                make_dial_socket(IPv4Address(SOURCE), taken, transparent=True)
            assert exc.value.errno == errno.EADDRINUSE  # what the dial runs into first
            sock = await gateway.dial(ep(TARGET, target.getsockname()[1]), ep(SOURCE, taken))
            with sock:
                await check_connected(sock, target, taken)

    run(main)


def test_a_taken_four_tuple_at_connect_falls_back_to_any_port(run: Runner) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gateway = Gateway(Config(), loop, recording_observer()[0])
        with target_listener() as target:
            to = (TARGET, target.getsockname()[1])
            first = socket.socket()
            first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            first.bind((SOURCE, 0))
            taken = first.getsockname()[1]
            first.connect(to)  # SOURCE:taken -> target is in use
            held, _ = target.accept()
            with first, held:
                probe = make_dial_socket(IPv4Address(SOURCE), taken, transparent=True)
                with probe, pytest.raises(OSError) as exc:  # the bind works, the connect not
                    await loop.sock_connect(probe, to)
                assert exc.value.errno == errno.EADDRNOTAVAIL
                sock = await gateway.dial(ep(*to), ep(SOURCE, taken))
                with sock:
                    await check_connected(sock, target, taken)

    run(main)


def test_a_refused_dial_is_not_retried_and_says_why(run: Runner) -> None:
    """The fallback is for a source port that cannot be used, nothing else: a refusal (here
    from a fallen-back dial) is raised, with the system's reason as its text (the event
    loop's own text names only the address)."""

    async def main() -> None:
        gateway = Gateway(Config(), asyncio.get_running_loop(), recording_observer()[0])
        with target_listener() as gone:
            port = gone.getsockname()[1]  # closed below: nothing listens there
        with make_listener(IPv4Address(SOURCE), 0, transparent=False) as holder:
            taken = holder.getsockname()[1]
            with pytest.raises(ConnectionRefusedError) as exc:
                await gateway.dial(ep(TARGET, port), ep(SOURCE, taken))
            with pytest.raises(ConnectionRefusedError) as plain:
                await gateway.dial(ep(TARGET, port), None)
        assert exc.value.strerror == plain.value.strerror == os.strerror(errno.ECONNREFUSED)

    run(main)


def test_a_dial_nobody_answers_times_out(run: Runner) -> None:
    """A listener whose accept queue is full drops SYNs: the connect never completes and
    gives up after `connect_timeout` with an OSError saying so."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gateway = Gateway(Config(connect_timeout=0.3), loop, recording_observer()[0])
        with socket.socket() as full:
            full.bind((TARGET, 0))
            full.listen(0)  # room for one connection, never accepted
            with (
                socket.create_connection(full.getsockname()),
                pytest.raises(OSError, match=r"^timed out after 0.3 s$"),
            ):
                await gateway.dial(ep(*full.getsockname()), ep(SOURCE, 0))

    run(main)


def test_transparent_connection_to_the_gateway_itself_has_no_upstream(run: Runner) -> None:
    """Transparent mode, a connection addressed to one of the gateway's own addresses:
    `421` (no FTP server behind it), a `session_refused`, never a dial back to itself."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        observe, records = recording_observer()
        gateway = Gateway(Config(), loop, observe)
        lst = make_listener(IPv4Address("127.0.0.2"), 0, transparent=False)
        await gateway.start([lst])
        try:
            client = socket.socket()
            client.setblocking(False)
            with client:
                await loop.sock_connect(client, lst.getsockname())
                assert await recv_all(client) == P.NO_UPSTREAM
            await until(lambda: records.of(SessionRefused), "session_refused")
            (refused,) = records.of(SessionRefused)
            assert refused.reply == P.NO_UPSTREAM
            assert not gateway.sessions
        finally:
            await gateway.shutdown(0.1)

    run(main)
