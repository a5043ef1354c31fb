"""ControlSession with stand-in transports: which writes the control connections get.

Lines that arrive together leave together (one write per side and batch); a half-close
(write_eof) and the end of the session come after the writes before them; the bytes are
always exactly the lines, in order.
"""

from __future__ import annotations

import asyncio
import random
from ipaddress import ip_address
from typing import Any

from ftpalg.core.messages import Endpoint, Faces, ListenerOpened, OpenListener, Side
from ftpalg.core.session import Session
from ftpalg.ops.config import Config
from ftpalg.proxy.control import ControlSession, HalfProtocol
from ftpalg.proxy.gateway import core_policy
from tests.proxy.rig import recording_observer


class Transport:
    def __init__(self, log: list[tuple[str, bytes]], name: str) -> None:
        self.log, self.name, self.closing = log, name, False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def write_eof(self) -> None:
        self.log.append((self.name, b"<eof>"))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True


class Plane:
    name = "relay"

    def open(self, action: OpenListener) -> ListenerOpened:
        return ListenerOpened(action.listener, action.port)

    def close(self, listener: int) -> None:
        pass

    def connect(self, action: Any) -> None:
        pass

    def reject(self, conn: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Host:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def session_ended(self, control: ControlSession) -> None:
        pass

    def next_conn_id(self) -> int:
        return 1


def ep(host: str, port: int) -> Endpoint:
    return Endpoint(ip_address(host), port)


def session(loop: asyncio.AbstractEventLoop) -> tuple[HalfProtocol, HalfProtocol, list[Any]]:
    faces = Faces(ep("10.0.0.2", 4000), ep("10.0.1.9", 21), ep("10.0.1.9", 21), ep("10.0.1.1", 9))
    core = Session(faces, core_policy(Config()), loop.time(), random.Random(1))
    observe, _ = recording_observer()
    control = ControlSession(Host(loop), core, observe, lambda c: Plane())  # type: ignore[arg-type]
    log: list[tuple[str, bytes]] = []
    halves = []
    for side in Side:
        half = HalfProtocol(control, side)
        half.connection_made(Transport(log, side.value))  # type: ignore[arg-type]
        halves.append(half)
    return halves[0], halves[1], log


def test_lines_that_arrive_together_leave_in_one_write() -> None:
    async def main() -> None:
        client, server, log = session(asyncio.get_running_loop())
        server.data_received(b"150 Here it comes.\r\n226 Done.\r\n")
        client.data_received(b"NOOP\r\n")
        server.data_received(b"200 a\r\n211-b\r\n more\r\n211 end\r\n")
        assert log == [
            ("client", b"150 Here it comes.\r\n226 Done.\r\n"),
            ("server", b"NOOP\r\n"),
            ("client", b"200 a\r\n211-b\r\n more\r\n211 end\r\n"),
        ]

    asyncio.run(main())


def test_a_rewritten_line_and_the_end_come_after_the_lines_before_them() -> None:
    async def main() -> None:
        client, server, log = session(asyncio.get_running_loop())
        server.data_received(b"200 ok\r\n227 Entering Passive Mode (10,0,1,9,4,1).\r\n221 Bye.\r\n")
        server.eof_received()
        sent = b"".join(data for name, data in log if name == "client" and data != b"<eof>")
        assert sent.startswith(b"200 ok\r\n227 Entering Passive Mode (10,0,1,9,4,1)")
        assert sent.endswith(b"221 Bye.\r\n") and sent.count(b"\r\n") == 3
        assert log[-1] == ("client", b"<eof>")  # the half-close after every line
        client.eof_received()  # ... and the server's after the client's EOF
        assert [name for name, data in log if data == b"<eof>"][:2] == ["client", "server"]

    asyncio.run(main())
