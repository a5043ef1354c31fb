"""A finished control session is freed by reference counting, not by the cyclic GC.

At a high session rate, one reference cycle per session (the session <-> its data plane,
whose feed is the session's `handle`) left every session's objects to the cyclic GC, whose
collections then cost about as much as a session's control lines. Through the real `Gateway`,
`ControlSession`, core and relay (tests/proxy/rig.py): a session with a passive transfer,
ended by both peers; with the GC off and DEBUG_SAVEALL, a collection then finds none of
ftpalg's objects in a cycle.
"""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from tests.proxy.rig import (
    Runner,
    open_fds,
    recv_all,
    recv_line,
    rig,
    run_fixture,  # noqa: F401  (the `run` fixture)
)

pytestmark = pytest.mark.timeout(60)


def test_a_finished_session_with_a_transfer_leaves_no_cycles(run: Runner) -> None:
    left: list[str] = []

    async def main() -> None:
        r = await rig()
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        conn = await r.connect()
        data, where = await r.passive(conn)
        await loop.sock_connect(data, where)
        (await r.gateway.dials.get()).release.set_result(None)
        far, _ = await loop.sock_accept(r.data_listener)
        r.track(far).setblocking(False)
        await loop.sock_sendall(far, b"listing\r\n")
        far.shutdown(socket.SHUT_WR)
        assert await recv_all(data) == b"listing\r\n"
        data.close()
        await loop.sock_sendall(conn.server, b"226 done\r\n")
        assert await recv_line(conn.client) == b"226 done\r\n"
        conn.client.shutdown(socket.SHUT_WR)
        conn.server.shutdown(socket.SHUT_WR)
        assert await recv_all(conn.client) == b""
        assert await recv_all(conn.server) == b""
        await r.ended(conn)
        await r.settled(baseline)
        del conn  # the test's own reference

        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            mine = (type(o) for o in gc.garbage)
            left.extend(f"{t.__module__}.{t.__qualname__}" for t in mine)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        await r.close()

    gc.collect()
    gc.disable()
    try:
        run(main)
    finally:
        gc.enable()
    assert [name for name in left if name.startswith("ftpalg.")] == []
