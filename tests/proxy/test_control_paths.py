"""The session driver's rarer paths, in process, through real loopback sockets: the real
`Gateway`, `ControlSession` and core `Session`; only data dials wait for the test
(`tests/proxy/rig.py`). Every test ends with no session, no task and no descriptor left
behind, and no error-level line.

- back-pressure from a full peer: reading from one side pauses while the other side's
  transport cannot take more, and resumes when it drained; every byte arrives in order;
- back-pressure from the core's backlog: lines held behind a data dial pause reading from
  their side beyond `BACKLOG_LIMIT`; the dial's end releases them, in order;
- a control connection reset mid-session ends the session and closes its data listener;
- accept() failing on a data listener (EMFILE) is reported and the connection is accepted
  once descriptors are free again;
- a data dial that ends after its session closed still relays and is reported;
- a data connection from the wrong peer is closed at once, the expectation stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import encodings.idna  # noqa: F401  (uvloop imports it on its first connect: not while exhausted)
import errno
import os
import resource
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from ftpalg.core.messages import Endpoint, Side
from ftpalg.core.observations import (
    DataEnded,
    DataMode,
    DataRejected,
    DataStarted,
    ExpectationEnded,
    ExpectationOutcome,
    Refusal,
    SessionClosed,
)
from ftpalg.ops.events import Failed, Fault
from ftpalg.proxy.control import BACKLOG_LIMIT
from ftpalg.proxy.sockets import endpoint
from tests.proxy.rig import (
    SERVER_HOST,
    Conn,
    Rig,
    Runner,
    nothing_waiting,
    open_fds,
    recv_all,
    recv_exact,
    recv_line,
    reset,
    rig,
    run_fixture,  # noqa: F401  (the `run` fixture)
    until,
)

pytestmark = pytest.mark.timeout(120)
CLIENT, SERVER = Side.CLIENT, Side.SERVER
MiB = 1024 * 1024
TURNS = 200  # turns of the event loop (a spinning listener fails once in each)


def send_buffer_max() -> int:
    """The most a TCP socket's send buffer may grow to (net.ipv4.tcp_wmem, third field)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def numbered(prefix: bytes, total: int, width: int = 1000) -> bytes:
    """Control lines of `width` bytes, numbered, `total` bytes in all (order is visible)."""
    out = bytearray()
    i = 0
    while len(out) < total:
        head = prefix + b" %08d " % i
        out += head + b"x" * (width - len(head) - 2) + b"\r\n"
        i += 1
    return bytes(out)


async def finish(r: Rig, conn: Conn, baseline: int, expected: Fault | None = None) -> None:
    """Both peers close: the session ends, nothing stays open, nothing went wrong (but the
    `expected` fault)."""
    for sock in (conn.client, conn.server):
        sock.close()
    await r.ended(conn)
    await r.settled(baseline)
    assert not r.records.errors(), r.records.errors()
    failed = [f for f in r.records.of(Failed) if f.what is not expected]
    assert not failed, failed


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """No descriptor left in this process until the block ends (the limit is restored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, highest + 16), hard))
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE, exc
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- a full peer pauses reading from the other side ----------------------------------------------


@pytest.mark.parametrize("sender", [CLIENT, SERVER], ids=["client-sends", "server-sends"])
def test_a_full_peer_pauses_reading_from_the_other_side(run: Runner, sender: Side) -> None:
    """The receiving end does not read: ftpalg's transport towards it fills
    (`pause_writing`), so reading from the sender pauses ("peer"); when the receiver reads,
    the transport drains (`resume_writing`), reading resumes and every byte arrives."""

    async def main() -> None:
        r = await rig(small=True)
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        conn = await r.connect()
        src, dst = (conn.client, conn.server) if sender is CLIENT else (conn.server, conn.client)
        # more than the kernel may hold in ftpalg's socket towards the receiver
        payload = numbered(b"NOOP" if sender is CLIENT else b"200-", send_buffer_max() + 2 * MiB)
        reading, writing = conn.half(sender), conn.half(sender.other)
        assert reading.transport is not None and writing.transport is not None
        send = asyncio.ensure_future(loop.sock_sendall(src, payload))

        await until(lambda: reading.paused_for, "reading from the sender to pause")
        assert reading.paused_for == {"peer"}
        assert not reading.transport.is_reading()
        held = writing.transport.get_write_buffer_size()
        assert held > 0  # what the receiver's side could not take
        for _ in range(50):  # paused: nothing more is read from the sender
            await asyncio.sleep(0)
        assert writing.transport.get_write_buffer_size() <= held
        assert reading.paused_for == {"peer"}

        assert await recv_exact(dst, len(payload)) == payload  # drained: all, in order
        await send
        await until(lambda: not reading.paused_for, "reading to resume")
        assert reading.transport.is_reading()
        assert writing.transport.get_write_buffer_size() == 0
        await loop.sock_sendall(src, b"NOOP\r\n" if sender is CLIENT else b"200 ok\r\n")
        assert await recv_line(dst) == (b"NOOP\r\n" if sender is CLIENT else b"200 ok\r\n")
        await finish(r, conn, baseline)
        await r.close()

    run(main)


@pytest.mark.parametrize("second", ["server-reset", "server-eof"])
def test_a_reset_unnoticed_behind_back_pressure_still_ends_the_session(
    run: Runner, second: str
) -> None:
    """Reading from the client is paused (the server does not read) when the client resets:
    ftpalg cannot notice yet. Then the server leaves (a reset, or an EOF while it still reads
    nothing): passing that EOF on to the client (`ShutdownWrite`) meets the dead socket. The
    session must still end, with nothing escaping into the event loop, nothing left open."""

    async def main() -> None:
        r = await rig(small=True)
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        conn = await r.connect()
        reading = conn.half(CLIENT)
        payload = numbered(b"NOOP", send_buffer_max() + 2 * MiB)
        send = asyncio.ensure_future(loop.sock_sendall(conn.client, payload))
        await until(lambda: reading.paused_for, "reading from the client to pause")
        send.cancel()
        reset(conn.client)
        for _ in range(TURNS):  # paused: the reset stays unnoticed
            await asyncio.sleep(0)
        assert not conn.control.closed
        if second == "server-reset":
            reset(conn.server)
        else:
            conn.server.shutdown(socket.SHUT_WR)  # still not reading
        await r.ended(conn)
        assert len(r.records.of(SessionClosed)) == 1
        lost = [line.fields["side"] for line in r.records.events("control_connection_lost")]
        # a line for what was noticed as lost; never the server for its plain EOF
        assert ("server" in lost) == (second == "server-reset"), lost
        await r.settled(baseline)
        assert not r.records.errors(), r.records.errors()
        await r.close()

    run(main)


# ---- lines held behind a data dial pause reading beyond BACKLOG_LIMIT ----------------------------


@pytest.mark.parametrize("mode", [DataMode.PASSIVE, DataMode.ACTIVE], ids=lambda m: m.value)
def test_lines_held_behind_a_data_dial_pause_reading_beyond_the_backlog_limit(
    run: Runner, mode: DataMode
) -> None:
    """While ftpalg dials the far end of a data connection, the connecting side's lines are
    held (a 226 must not overtake its data connection). Beyond `BACKLOG_LIMIT` held bytes,
    reading from that side pauses ("backlog"); the other direction keeps flowing. When the
    dial ends the lines are released, byte for byte in order, and reading resumes."""

    async def main() -> None:
        r = await rig()
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        conn = await r.connect()
        passive = mode is DataMode.PASSIVE
        data, where = await (r.passive(conn) if passive else r.active(conn))
        await loop.sock_connect(data, where)
        dial = await r.gateway.dials.get()
        assert dial.target == Endpoint(IPv4Address(SERVER_HOST), r.data_port)
        held_side = CLIENT if passive else SERVER
        src, dst = (conn.client, conn.server) if passive else (conn.server, conn.client)
        payload = numbered(b"SITE" if passive else b"150-", 4 * BACKLOG_LIMIT)
        send = asyncio.ensure_future(loop.sock_sendall(src, payload))
        half = conn.half(held_side)
        assert half.transport is not None

        await until(lambda: half.paused_for, "reading from the held side to pause")
        assert half.paused_for == {"backlog"}
        assert not half.transport.is_reading()
        assert conn.control.core.backlog(held_side) > BACKLOG_LIMIT
        assert nothing_waiting(dst)  # held, not forwarded
        other = b"200 the other way\r\n" if passive else b"NOOP\r\n"
        await loop.sock_sendall(dst, other)  # the other direction is not held
        assert await recv_line(src) == other

        dial.release.set_result(None)  # the dial goes ahead and connects
        far, _ = await loop.sock_accept(r.data_listener)
        r.track(far).setblocking(False)
        assert await recv_exact(dst, len(payload)) == payload
        await send
        await until(lambda: not half.paused_for, "reading to resume")
        assert half.transport.is_reading()
        assert conn.control.core.backlog(held_side) == 0

        server_end, client_end = (far, data) if passive else (data, far)
        blob = os.urandom(300_000)
        await loop.sock_sendall(server_end, blob)
        server_end.shutdown(socket.SHUT_WR)
        assert await recv_all(client_end) == blob
        client_end.close()
        assert await recv_all(server_end) == b""
        await until(lambda: r.records.of(DataEnded), "the data connection to be reported")
        (ended,) = r.records.of(DataEnded)
        assert (ended.mode, ended.result, ended.bytes_to_client) == (mode, "ok", len(blob))
        await finish(r, conn, baseline)
        await r.close()

    run(main)


# ---- a control connection lost mid-session ----------------------------------------------------


@pytest.mark.parametrize("lost", [CLIENT, SERVER], ids=["client-reset", "server-reset"])
def test_a_control_connection_reset_mid_session_ends_the_session(run: Runner, lost: Side) -> None:
    """A reset on one control connection while a data listener stands: the other peer gets
    an EOF, the session closes ("<side> connection lost"), the listener is closed (a
    connection to it is refused), the expectation is dropped; an info line, never an error."""

    async def main() -> None:
        r = await rig()
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        conn = await r.connect()
        data, where = await r.passive(conn)
        with socket.socket() as probe, pytest.raises(OSError) as taken:
            probe.bind(where)  # the data listener stands
        assert taken.value.errno == errno.EADDRINUSE

        gone, survivor = (
            (conn.client, conn.server) if lost is CLIENT else (conn.server, conn.client)
        )
        reset(gone)
        assert await recv_all(survivor) == b""  # an EOF, nothing else
        survivor.close()
        await r.ended(conn)

        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(data, where)
        assert [o.reason for o in r.records.of(SessionClosed)] == [f"{lost.value} connection lost"]
        dropped = [o.outcome for o in r.records.of(ExpectationEnded)]
        assert dropped == [ExpectationOutcome.DROPPED]
        (line,) = r.records.events("control_connection_lost")
        assert (line.level, line.fields["side"]) == ("info", lost.value)
        assert "reset" in line.fields["error"].lower(), line
        await r.settled(baseline)
        assert not r.records.errors(), r.records.errors()
        assert not r.records.of(Failed)
        await r.close()

    run(main)


# ---- accept() on a data listener fails -----------------------------------------------------------


def test_emfile_on_a_data_accept_is_reported_and_the_listener_stays(run: Runner) -> None:
    """The client connects to the data listener while the process has no descriptor left:
    accept() fails with EMFILE, reported as `data_accept_failed` (a warning); the listener,
    still readable, rests instead of being polled (and failing, and logging) on every turn
    of the loop; it stays, and once descriptors are free the same connection is accepted and
    relayed."""

    async def main() -> None:
        r = await rig()
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        conn = await r.connect()
        data, where = await r.passive(conn)

        def accept_failures() -> list[Failed]:
            return [f for f in r.records.of(Failed) if f.what is Fault.DATA_ACCEPT]

        with descriptors_exhausted():
            await loop.sock_connect(data, where)  # needs no new descriptor here
            await until(accept_failures, "accept() to fail on the data listener")
            for _ in range(TURNS):  # still no descriptor: the listener is not polled on
                await asyncio.sleep(0)  # every turn of the loop (it would spin)
            failures = len(accept_failures())
            assert failures < TURNS // 4, f"{failures} failed accept() calls in {TURNS} turns"
        assert all(os.strerror(errno.EMFILE) in f.error for f in accept_failures())
        assert {line.level for line in r.records.events("data_accept_failed")} == {"warning"}

        dial = await r.gateway.dials.get()  # the listener stayed: accepted now
        dial.release.set_result(None)
        far, _ = await loop.sock_accept(r.data_listener)
        r.track(far).setblocking(False)
        await loop.sock_sendall(far, b"listing\r\n")
        far.shutdown(socket.SHUT_WR)
        assert await recv_all(data) == b"listing\r\n"
        data.close()
        await until(lambda: r.records.of(DataEnded), "the data connection to be reported")
        assert [e.result for e in r.records.of(DataEnded)] == ["ok"]
        await finish(r, conn, baseline, expected=Fault.DATA_ACCEPT)
        await r.close()

    run(main)


# ---- the session ends while a data dial is in progress -------------------------------------------


@pytest.mark.parametrize("outcome", ["connects", "refused"])
def test_a_dial_that_ends_after_its_session_closed_is_still_relayed_and_reported(
    run: Runner, outcome: str
) -> None:
    """The client's control connection resets while ftpalg is dialing the server's data
    port: the session closes (CloseSession) first; then the dial ends — it connects and the
    transfer runs to the end, or it is refused and the client's data connection is closed.
    Either way one `data_finished` follows `session_closed`, no exception, nothing leaks."""

    async def main() -> None:
        r = await rig()
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        conn = await r.connect()
        data, where = await r.passive(conn)
        await loop.sock_connect(data, where)
        dial = await r.gateway.dials.get()

        reset(conn.client)
        assert await recv_all(conn.server) == b""
        conn.server.close()
        await until(lambda: conn.control.closed, "the session to close")
        assert conn.control not in r.gateway.sessions
        assert r.gateway.data_tasks  # the dial is still going on

        blob = os.urandom(200_000)
        if outcome == "connects":
            dial.release.set_result(None)
            far, _ = await loop.sock_accept(r.data_listener)
            r.track(far).setblocking(False)
            await loop.sock_sendall(far, blob)
            far.shutdown(socket.SHUT_WR)
            assert await recv_all(data) == blob
            data.close()
            assert await recv_all(far) == b""
        else:
            r.data_listener.close()  # nothing listens there any more: a real refusal
            baseline -= 1
            dial.release.set_result(None)
            assert await recv_all(data) == b""
        await until(lambda: not r.gateway.tasks, "the data task to finish")

        (ended,) = r.records.of(DataEnded)
        kinds = [type(o) for o in r.records.observations]
        assert kinds.index(SessionClosed) < kinds.index(DataEnded)
        if outcome == "connects":
            assert (ended.result, ended.bytes_to_client) == ("ok", len(blob))
        else:
            port = r.data_port
            refused = os.strerror(errno.ECONNREFUSED)
            assert ended.result == f"connect {SERVER_HOST}:{port}: {refused}"
            assert ended.bytes_to_client == ended.bytes_to_server == 0
        await r.settled(baseline)
        assert not r.records.errors(), r.records.errors()
        assert not r.records.of(Failed), r.records.of(Failed)
        await r.close()

    run(main)


# ---- a data connection from the wrong peer -------------------------------------------------------


def test_a_data_connection_from_another_address_is_closed_and_the_expectation_stays(
    run: Runner,
) -> None:
    """Passive mode: a connection to the announced data listener from an address other than
    the client's is closed at once (`data_theft_refused`); the client's own connection is
    then accepted and relayed (the expectation was not used up)."""

    async def main() -> None:
        r = await rig()
        loop = asyncio.get_running_loop()
        baseline = open_fds()
        conn = await r.connect()
        data, where = await r.passive(conn)
        thief = r.track(socket.socket())
        thief.bind(("127.0.0.5", 0))
        thief.setblocking(False)
        await loop.sock_connect(thief, where)
        with contextlib.suppress(ConnectionResetError):
            assert await recv_all(thief) == b""  # closed by ftpalg
        (rejected,) = r.records.of(DataRejected)
        assert (rejected.reason, rejected.peer) == (Refusal.THEFT, endpoint(thief.getsockname()))
        assert not r.records.of(DataStarted)

        await loop.sock_connect(data, where)
        dial = await r.gateway.dials.get()
        dial.release.set_result(None)
        far, _ = await loop.sock_accept(r.data_listener)
        r.track(far).setblocking(False)
        await loop.sock_sendall(far, b"data")
        far.shutdown(socket.SHUT_WR)
        assert await recv_all(data) == b"data"
        data.close()
        await until(lambda: r.records.of(DataEnded), "the data connection to be reported")
        assert [e.result for e in r.records.of(DataEnded)] == ["ok"]
        await finish(r, conn, baseline)
        await r.close()

    run(main)
