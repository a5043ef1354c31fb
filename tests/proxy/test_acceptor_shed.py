"""The acceptor when the process is out of descriptors, in a child process of its own (the
test never lowers pytest's own limit): a real `Acceptor` on a real listening socket, a real
client, descriptors filled up to the (lowered) limit.

- shedding: accept() fails with EMFILE; the spare descriptor is given up so the waiting
  connection can be accepted and told `OUT_OF_RESOURCES` (refusal.py), one `session_refused`
  ("out of file descriptors"); the spare is taken again; a later connection is accepted;
- pausing: with no spare to give up, the acceptor stops polling the listener
  (`accept_paused`) instead of spinning on it, and accepts the waiting connection once
  descriptors are free again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from ftpalg.core import policy as P

pytestmark = pytest.mark.timeout(120)

CHILD = r"""
import asyncio, errno, json, os, resource, socket, sys
import encodings.idna  # uvloop's sock_connect imports it on first use: not while exhausted
from ipaddress import IPv4Address

import uvloop

from ftpalg.ops.observer import Observer
from ftpalg.proxy.acceptor import Acceptor
from ftpalg.proxy.sockets import make_listener

TURNS = 200


class Log:
    def __init__(self):
        self.lines = []

    def bind(self, **context):
        return self

    def __getattr__(self, level):
        def line(event, **fields):
            self.lines.append({"level": level, "event": event, **fields})
        return line


def exhaust():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, highest + 16), hard))
    fillers = []
    while True:
        try:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            return fillers


def release(fillers):
    for fd in fillers:
        os.close(fd)


def descriptor_free():
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
        return False
    return True


async def until(cond, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def recv_all(sock):
    loop = asyncio.get_running_loop()
    data = b""
    while chunk := await loop.sock_recv(sock, 1000):
        data += chunk
    return data


def client():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def main(scenario):
    loop = asyncio.get_running_loop()
    log = Log()
    observations = []
    observe = Observer(log, [observations.append])
    accepted = []
    lst = make_listener(IPv4Address("127.0.0.1"), 0, transparent=False)
    report = {}
    first = client()
    if scenario == "shed":
        acceptor = Acceptor(loop, lst, lambda c, p: accepted.append((c, p)), observe)
        acceptor.start()
        fillers = exhaust()
        report["free_before"] = descriptor_free()
        await loop.sock_connect(first, lst.getsockname())
        report["reply"] = (await recv_all(first)).decode()
        report["free_after"] = descriptor_free()  # the spare took its place again
        release(fillers)
    else:
        fillers = exhaust()
        acceptor = Acceptor(loop, lst, lambda c, p: accepted.append((c, p)), observe)
        acceptor.start()
        await loop.sock_connect(first, lst.getsockname())
        await until(lambda: observations, "accept_paused")
        for _ in range(TURNS):
            await asyncio.sleep(0)
        report["paused_reports"] = len(observations)
        report["accepted_while_exhausted"] = len(accepted)
        release(fillers)
        await until(lambda: accepted, "the waiting connection to be accepted")
        conn, peer = accepted.pop()
        report["peer"] = list(peer)
        report["client"] = list(first.getsockname())
        await loop.sock_sendall(conn, b"220 welcome\r\n")
        conn.close()
        report["reply"] = (await recv_all(first)).decode()
    first.close()
    later = client()
    await loop.sock_connect(later, lst.getsockname())  # descriptors free: business as usual
    await until(lambda: accepted, "a later connection to be accepted")
    report["later"] = [list(accepted[0][1]), list(later.getsockname())]
    accepted[0][0].close()
    later.close()
    acceptor.close()
    report["observations"] = [
        {"type": type(o).__name__, "event": o.event, "level": o.level, **o.fields()}
        for o in observations
    ]
    report["lines"] = log.lines
    return report


factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop
with asyncio.Runner(loop_factory=factory) as runner:
    print(json.dumps(runner.run(main(sys.argv[2]))))
"""


def child(loop: str, scenario: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, loop, scenario],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_out_of_descriptors_the_spare_is_given_up_to_refuse_with_a_reply(loop: str) -> None:
    report = child(loop, "shed")
    assert report["free_before"] is False  # the spare is the only descriptor to give up
    assert report["reply"] == P.OUT_OF_RESOURCES.decode()
    assert report["free_after"] is False  # ... and it was taken again afterwards
    (refused,) = report["observations"]
    assert refused["type"] == "SessionRefused"
    assert refused["reason"] == "out of file descriptors"
    assert refused["client"].startswith("127.0.0.1:")
    (line,) = report["lines"]
    assert (line["level"], line["event"]) == ("warning", "session_refused")
    assert line["reason"] == "out of file descriptors"
    peer, client = report["later"]
    assert peer == client  # a later connection is accepted and handed on


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_with_no_spare_accepting_pauses_and_resumes(loop: str) -> None:
    report = child(loop, "pause")
    assert report["accepted_while_exhausted"] == 0
    observations = report["observations"]
    assert observations and all(o["event"] == "accept_paused" for o in observations)
    assert all(o["type"] == "Failed" and o["level"] == "error" for o in observations)
    assert "Too many open files" in observations[0]["error"]
    # paused, not spinning: far fewer reports than turns of the loop
    assert report["paused_reports"] < 50, report["paused_reports"]
    # resumed: the waiting connection itself is accepted and served, not refused
    assert report["peer"] == report["client"]
    assert report["reply"] == "220 welcome\r\n"
    peer, client = report["later"]
    assert peer == client
