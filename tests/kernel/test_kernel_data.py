"""`KernelData` (the kernel data plane's link to the kernel) on a real gateway: above all when
conntrack events are lost (ENOBUFS): it re-syncs from a dump, and every data connection still
gets exactly one `DataAccepted` and one `DataFinished` with the right outcome; also the drain
at SIGTERM and what `close()` finishes. Real parts throughout: a client — gateway — server
lab, ftpalg's table with its pinholes, a `KernelData` built inside the gateway's namespace
(its watcher, NFLOG and nf_tables sockets live there), `KernelPlane.open` for every pinhole,
real TCP connections through them, real conntrack events, a real overflow and a real dump.

How the overflow is made: the watcher gets a small receive buffer, and the event loop is
blocked (a synchronous subprocess) while a burst of tagged connections runs, so nothing is
read. Once the buffer overflows the kernel marks the socket congested and drops every later
event until it has been read empty; the conntracks deleted while it is so end unseen.

The connections, all passive, each through its own pinhole:

- `held` (3): connected and seen (their events read) before the burst, held open; their
  conntracks are deleted during the overflow: "conntrack events lost", 0 bytes;
- `queued` (1): connected first while nothing is read, so its start is among the events still
  queued when the buffer overflows; held open, its conntrack deleted during the overflow:
  "conntrack events lost" (it must start from the queued event and end by the dump);
- `ok` (80 downloads of 0-200 KB) and `reset` (10, read to EOF and closed with a reset), among
  them: most of their events lost, found ended in the dump: ok / "reset", bytes exact;
- `after` (1): a download after the re-sync: the events flow again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from ftpalg.core.messages import (
    DataAccepted,
    DataFinished,
    Endpoint,
    Event,
    ListenerOpened,
    OpenListener,
)
from ftpalg.kernel import nft
from ftpalg.kernel.conntrack import (
    ConntrackWatcher,
    CtEvent,
    CtTuple,
    ensure_conntrack_sysctls,
)
from ftpalg.kernel.conntrack_netns import in_netns, netlink_socket
from ftpalg.kernel.conntrack_wire import (
    CTA_TUPLE_ORIG,
    IPCTNL_MSG_CT_DELETE,
    NLM_F_ACK,
    NLMSG_ERROR,
    encode_tuple,
    error_code,
    messages,
    request,
)
from ftpalg.kernel.pinholes import TAG_BIT
from ftpalg.ops.logs import get_logger
from ftpalg.ops.observer import Observer
from ftpalg.proxy.kernel_plane import KernelData, KernelPlane
from tests.kernel.conftest import Lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

CLIENT, GW_IN = IPv4Address("10.78.1.2"), IPv4Address("10.78.1.1")
GW_OUT, SERVER = IPv4Address("198.51.100.1"), IPv4Address("198.51.100.10")
RCVBUF = 16 << 10  # the watcher's buffer: a few dozen events (the burst makes ~600)

OPERATOR_FIREWALL = """\
table inet operator {
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct mark & 0x80000000 == 0x80000000 accept
\t}
}
"""

# One listener per port; size < 0: accept and hold, else send SIZE bytes, half-close and read
# to EOF (a reset is fine). HOST and SIZES are prepended.
SERVER_CODE = """
import socket, threading
def serve(listener, size):
    conn, _ = listener.accept()
    if size < 0:
        conn.recv(1)
        return
    conn.sendall(b"x" * size)
    conn.shutdown(socket.SHUT_WR)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()
for port, size in SIZES.items():
    listener = socket.create_server((HOST, port))
    threading.Thread(target=serve, args=(listener, size), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Downloads one after the other: read to EOF, then close (with a reset when asked).
CLIENT_CODE = """
import json, socket, struct, sys
out = []
for port, reset in json.loads(sys.argv[3]):
    s = socket.socket()
    s.bind((sys.argv[2], 0))
    s.settimeout(10)
    s.connect((sys.argv[1], port))
    got = 0
    while data := s.recv(65536):
        got += len(data)
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    out.append([port, s.getsockname()[1], got])
    s.close()
print(json.dumps(out))
"""

# Connections held open until stdin closes.
HOLD_CODE = """
import json, socket, sys
socks = [socket.create_connection((sys.argv[1], p), source_address=(sys.argv[2], 0))
         for p in json.loads(sys.argv[3])]
print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)
sys.stdin.read()
"""


@dataclass
class Net:
    lab: Lab
    cli: str
    gw: str
    srv: str

    def argv(self, ns: str, code: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args]


def _veth(lab: Lab, a: str, a_if: str, b: str, b_if: str) -> None:
    lab.sh(a, "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
    lab.sh(a, "ip", "link", "set", a_if, "up")
    lab.sh(b, "ip", "link", "set", b_if, "up")


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    """Client — gateway — server; the gateway with ftpalg's table (pinholes, NFLOG rule) and
    an operator's forward chain that drops all but ftpalg's tag."""
    cli, gw, srv = lab.netns("cli"), lab.netns("gw"), lab.netns("srv")
    _veth(lab, cli, "eth0", gw, "lan0")
    _veth(lab, srv, "eth0", gw, "wan0")
    lab.sh(cli, "ip", "addr", "add", f"{CLIENT}/24", "dev", "eth0")
    lab.sh(cli, "ip", "route", "add", "default", "via", str(GW_IN))
    lab.sh(gw, "ip", "addr", "add", f"{GW_IN}/24", "dev", "lan0")
    lab.sh(gw, "ip", "addr", "add", f"{GW_OUT}/24", "dev", "wan0")
    lab.sh(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.sh(srv, "ip", "addr", "add", f"{SERVER}/24", "dev", "eth0")  # replies go to GW_OUT
    plan = nft.NftPlan(proxy_port_v4=None, proxy_port_v6=None, pinholes=True)
    nft.apply(nft.render(plan), netns=gw)
    nft.apply(OPERATOR_FIREWALL, netns=gw)
    ensure_conntrack_sysctls(gw)  # counters and events, as the daemon does at start
    yield Net(lab, cli, gw, srv)


@dataclass
class Conn:
    """One pinhole and what its plane was fed (what the core would see)."""

    kind: str
    port: int
    size: int
    events: list[Event] = field(default_factory=list)
    local_port: int | None = None

    @property
    def accepted(self) -> list[DataAccepted]:
        return [e for e in self.events if isinstance(e, DataAccepted)]

    @property
    def finished(self) -> list[DataFinished]:
        return [e for e in self.events if isinstance(e, DataFinished)]


class Planes:
    """A KernelPlane per pinhole over one KernelData. A feed closes its listener on
    DataAccepted, as the core's CloseListener does (single use)."""

    def __init__(self, data: KernelData) -> None:
        self.data = data
        self.conns: list[Conn] = []
        self._ids = itertools.count(1)

    def open(self, kind: str, port: int, size: int) -> Conn:
        conn = Conn(kind, port, size)
        planes: list[KernelPlane] = []

        def feed(event: Event) -> None:
            conn.events.append(event)
            if isinstance(event, DataAccepted):
                planes[0].close(event.listener)

        planes.append(KernelPlane(self.data, feed, lambda: next(self._ids), 60_000))
        action = OpenListener(1, SERVER, port, CLIENT, Endpoint(SERVER, port), GW_OUT)
        assert planes[0].open(action) == ListenerOpened(1, port)
        self.conns.append(conn)
        return conn


def _delete_conntracks(gw: str, conns: list[Conn]) -> None:
    """IPCTNL_MSG_CT_DELETE by original tuple (what `conntrack -D` or an early drop does)."""
    sock = netlink_socket(gw, 1 << 16)
    sock.bind((0, 0))
    sock.settimeout(5)
    try:
        for seq, conn in enumerate(conns, 1):
            assert conn.local_port is not None
            orig = CtTuple(4, 6, str(CLIENT), str(SERVER), conn.local_port, conn.port)
            body = encode_tuple(CTA_TUPLE_ORIG, orig)
            sock.send(request(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, socket.AF_INET, body))
            data = sock.recv(1 << 16)
            [(mtype, _f, _s, start, _e)] = list(messages(data))
            assert mtype == NLMSG_ERROR and error_code(data, start) == 0, orig
    finally:
        sock.close()


def _download(net: Net, conns: list[Conn]) -> None:
    """The downloads of `conns`, synchronously: the event loop reads nothing meanwhile."""
    plan = json.dumps([[c.port, c.kind == "reset"] for c in conns])
    argv = net.argv(net.cli, CLIENT_CODE, str(SERVER), str(CLIENT), plan)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    by_port = {c.port: c for c in conns}
    for port, local, got in json.loads(out.stdout):
        by_port[port].local_port = local
        assert got == by_port[port].size, (port, got)


def summary(planes: Planes) -> dict[tuple[str, int, int], int]:
    """How many connections of each kind were accepted and finished how often."""
    return dict(Counter((c.kind, len(c.accepted), len(c.finished)) for c in planes.conns))


async def _until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _hold(net: Net, conns: list[Conn]) -> subprocess.Popen[str]:
    """Connections to `conns`, held open until the process's stdin closes; synchronous."""
    argv = net.argv(
        net.cli, HOLD_CODE, str(SERVER), str(CLIENT), json.dumps([c.port for c in conns])
    )
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    net.lab.procs.append(proc)  # killed by PID at teardown if still running
    assert proc.stdout is not None
    for conn, local in zip(conns, json.loads(proc.stdout.readline()), strict=True):
        conn.local_port = local
    return proc


async def test_lost_events_every_connection_finishes_once(net: Net) -> None:
    data = in_netns(net.gw, lambda: KernelData(Observer(get_logger())))
    data.watcher.close()  # the same watcher, with a buffer that a burst overflows
    data.watcher = ConntrackWatcher(TAG_BIT, TAG_BIT, netns=net.gw, rcvbuf=RCVBUF)
    dumps: list[int] = []
    real_dump = data.watcher.dump

    def dump() -> list[CtEvent]:
        snapshot = real_dump()
        dumps.append(len(snapshot))
        return snapshot

    data.watcher.dump = dump  # type: ignore[method-assign]
    planes = Planes(data)
    held = [planes.open("held", 43000 + i, 0) for i in range(3)]
    queued = planes.open("queued", 43100, 0)
    burst = [planes.open("ok", 41000 + i, (i * 2503) % 200_000) for i in range(80)]
    burst[1:1] = [planes.open("reset", 42000 + i, 1000 + i * 7919) for i in range(10)]
    sizes = {c.port: -1 if c.kind in ("held", "queued") else c.size for c in planes.conns}
    sizes[44000] = 12345  # `after`, opened later
    code = f"HOST, SIZES = {str(SERVER)!r}, {sizes!r}\n{SERVER_CODE}"
    server = net.lab.spawn(net.srv, code)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    data.start(asyncio.get_running_loop())
    holders: list[subprocess.Popen[str]] = []
    try:
        holders.append(_hold(net, held))
        assert await _until(lambda: all(c.accepted for c in held), 10)  # seen
        await asyncio.sleep(0.3)
        assert data.watcher.overflows == 0 and not dumps  # nothing lost so far

        # Nothing is read from here to the next await. The queued connection's start is
        # queued first, then the burst overflows the buffer: every later event is dropped,
        # so the conntracks deleted now (held and queued) end unseen.
        holders.append(_hold(net, [queued]))
        _download(net, burst)
        _delete_conntracks(net.gw, [*held, queued])
        done = await _until(lambda: all(c.finished for c in planes.conns), 20)
        assert done, str(summary(planes))
        assert data.watcher.overflows >= 1 and dumps, (data.watcher.overflows, dumps)

        # the events flow again
        after = planes.open("after", 44000, 12345)
        _download(net, [after])
        assert await _until(lambda: bool(after.finished), 10), after.events
        await asyncio.sleep(0.5)  # late events (TIME_WAIT, ...) must not finish anything twice
    finally:
        for proc in holders:
            proc.communicate("", timeout=10)
        data.close()

    expected_error = {
        "held": "conntrack events lost",
        "queued": "conntrack events lost",
        "ok": None,
        "after": None,
        "reset": "reset",
    }
    assert summary(planes) == {
        ("held", 1, 1): 3,
        ("queued", 1, 1): 1,
        ("ok", 1, 1): 80,
        ("reset", 1, 1): 10,
        ("after", 1, 1): 1,
    }
    for conn in planes.conns:
        (accepted,), (finished,) = conn.accepted, conn.finished
        assert conn.local_port is not None
        assert accepted.peer == Endpoint(CLIENT, conn.local_port), (conn.kind, accepted)
        assert finished.conn == accepted.conn
        assert finished.error == expected_error[conn.kind], (conn.kind, conn.size, finished)
        # passive: accepted = the client, dialed = the server; a download goes to the client
        assert finished.dialed_to_accepted == conn.size, (conn.kind, conn.size, finished)
        if conn.kind != "reset":  # the reset's own direction falls back to the estimate
            assert finished.accepted_to_dialed == 0, (conn.kind, finished)
    assert data.running == {} and data.pinholes == {}


async def test_drained_waits_for_running_connections_and_close_finishes_them(net: Net) -> None:
    """`drained()` (the SIGTERM drain) returns only when no data connection runs; `close()`
    (ftpalg exits, the grace period over) finishes what still runs, so each connection gets
    its DataFinished."""
    data = in_netns(net.gw, lambda: KernelData(Observer(get_logger())))
    planes = Planes(data)
    held = planes.open("held", 43000, 0)
    done = planes.open("ok", 41000, 5000)
    code = f"HOST, SIZES = {str(SERVER)!r}, {{43000: -1, 41000: 5000}}\n{SERVER_CODE}"
    server = net.lab.spawn(net.srv, code)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    data.start(asyncio.get_running_loop())
    closed = False
    holder = _hold(net, [held])
    try:
        assert await _until(lambda: bool(held.accepted), 10)
        drain = asyncio.ensure_future(data.drained())
        _download(net, [done])
        assert await _until(lambda: bool(done.finished), 10), done.events
        await asyncio.sleep(0.3)
        assert not drain.done() and not held.finished  # the held connection still runs
        data.close()
        closed = True
        (finished,) = held.finished
        assert finished.error == "gateway shutting down", finished
        await asyncio.wait_for(drain, 2)
        assert data.running == {}
    finally:
        holder.communicate("", timeout=10)
        if not closed:
            data.close()
    (ok,) = done.finished
    assert (ok.dialed_to_accepted, ok.error) == (5000, None)
