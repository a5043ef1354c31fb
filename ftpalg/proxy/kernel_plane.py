"""The kernel data plane: expectations become pinholes, the kernel carries the bytes.

How this works (docs/data-plane.md). `KernelData` is the gateway's one link to the kernel:
the pinhole elements (`kernel/nfnl.py`), the conntrack events of tagged connections
(`kernel/conntrack.py`) and the SYN/FIN sequence numbers that make byte counts exact
(`kernel/conntrack_nflog.py`). Each control session has a `KernelPlane` with the relay's four
verbs:

- `open`: a pinhole for the expectation (peer . face . port), tagged with a fresh id. A face
  that is a local address (active mode, reverse mode) is held by a bound socket so the
  gateway's own connections cannot take the port; a face that is not (transparent passive:
  the server's own address) must not carry a live key already. Either conflict, or the
  kernel refusing the elements, is a `ListenerFailed`: the core tries another port.
- a conntrack NEW event with the tag is the connection the pinhole admitted: `DataAccepted`
  for that session's listener, from the peer the event names;
- `connect`: the kernel has already joined the two ends (DNAT/SNAT): `DataConnected` at once;
- the end: the first event in which both directions have sent their FIN (or an RST passed),
  or the conntrack is gone, ends the connection: bytes per direction from the sequence numbers
  of SYN and FIN when both were logged (exact), else from the conntrack counters (estimate,
  bound in `conntrack_payload.py`); then `DataFinished`, as from the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address

from ftpalg.core.messages import (
    ConnectData,
    DataAccepted,
    DataConnected,
    DataFinished,
    Endpoint,
    Event,
    ListenerFailed,
    ListenerOpened,
    OpenListener,
    OpenWindow,
)
from ftpalg.kernel.conntrack import ConntrackOverflow, ConntrackWatcher
from ftpalg.kernel.conntrack_nflog import SegmentLog, SegmentsLost, record
from ftpalg.kernel.conntrack_payload import SeqLedger, estimate_payload
from ftpalg.kernel.conntrack_types import CtEvent, TcpState
from ftpalg.kernel.errors import KernelSetupError
from ftpalg.kernel.nfnl import SetElements
from ftpalg.kernel.pinholes import NFLOG_GROUP, TAG_BIT, Pinhole, close_ops, id_of, open_ops
from ftpalg.ops.events import Failed, Fault
from ftpalg.ops.observer import Observer
from ftpalg.proxy.sockets import is_local_address
from ftpalg.proxy.tls_window import KernelWindows


@dataclass(slots=True)
class _Open:
    plane: KernelPlane
    listener: int
    pinhole: Pinhole
    hold: socket.socket | None


@dataclass(slots=True)
class _Running:
    plane: KernelPlane
    conn: int
    started: float
    first: CtEvent


CLOSE_DELAY = 0.5  # seconds the leftover elements of a used pinhole may wait (unregister)


class KernelData:
    def __init__(self, observe: Observer, table: str = "ftpalg") -> None:
        """Opens the netlink sockets (as root, before privileges are dropped)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.observe = observe
        self.watcher = ConntrackWatcher(TAG_BIT, TAG_BIT)  # before any pinhole exists
        # its request socket now, not at the first transfer's end: it is opened as root like
        # the others, and ftpalg's descriptors at rest do not grow by one after a transfer
        self.table = self.watcher.table
        self.elements = SetElements(table)
        self.segments: SegmentLog | None
        try:
            self.segments = SegmentLog(NFLOG_GROUP)
        except KernelSetupError as exc:  # counts fall back to the estimate
            observe.log.warning("data_plane_estimated_bytes", error=str(exc))
            self.segments = None
        self.ledger = SeqLedger()
        self._ids = itertools.count(1)
        self.pinholes: dict[int, _Open] = {}
        self.keys: set[tuple[object, ...]] = set()
        self.running: dict[int, _Running] = {}  # conntrack id -> the connection
        self._used: set[int] = set()  # pinholes that admitted their connection, still open
        self._flush: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.loop.add_reader(self.watcher.fileno(), self._on_events)
        if self.segments is not None:
            self.loop.add_reader(self.segments.fileno(), self._on_segments)

    async def drained(self) -> None:
        """Until no data connection runs (the gateway's drain at SIGTERM). Polled: entries
        also leave `running` without an event (`KernelPlane.reject`), and it is only awaited
        while shutting down."""
        while self.running:
            await asyncio.sleep(0.1)

    def close(self) -> None:
        """At exit: transfers still running (the grace period ran out) are finished with what
        is known, so each gets its `data_finished`; the table goes next and with it the NAT
        that carries them."""
        for ct_id in list(self.running):
            self._finish(ct_id, self.running[ct_id].first, error="gateway shutting down")
        for pid in list(self.pinholes):
            self.unregister(pid)
        if self._flush is not None:
            self._flush.cancel()
        self._flush_closes()
        if self.loop is not None:
            self.loop.remove_reader(self.watcher.fileno())
            if self.segments is not None:
                self.loop.remove_reader(self.segments.fileno())
        self.watcher.close()
        if self.segments is not None:
            self.segments.close()
        self.elements.close()

    def now(self) -> float:
        assert self.loop is not None, "start() first"
        return self.loop.time()

    def next_id(self) -> int:
        """A pinhole id for the ct mark's 31 bits (wraps after 2**31 - 1 pinholes)."""
        return (next(self._ids) - 1) % 0x7FFFFFFF + 1

    def unregister(self, pid: int) -> None:
        """Remove a pinhole's elements: at once while it may still admit a connection; once
        it has admitted one (its gate element is gone: the first SYN deleted it), with the
        next pinhole's transaction or within `CLOSE_DELAY`, whichever comes first (one
        nf_tables transaction per data connection instead of two)."""
        entry = self.pinholes.pop(pid, None)
        if entry is None:
            return
        self.keys.discard(entry.pinhole.key)
        if entry.hold is not None:
            entry.hold.close()

        def failed(exc: KernelSetupError) -> None:  # they time out with the expectation anyway
            self.observe(Failed(Fault.INTERNAL, f"pinhole {pid} close: {exc}"))

        if pid in self._used and self.loop is not None:
            self._used.discard(pid)
            self.elements.defer(close_ops(entry.pinhole), failed)
            if self._flush is None:
                self._flush = self.loop.call_later(CLOSE_DELAY, self._flush_closes)
            return
        self._used.discard(pid)
        try:
            self.elements.apply(close_ops(entry.pinhole))
        except KernelSetupError as exc:
            failed(exc)

    def _flush_closes(self) -> None:
        self._flush = None
        try:
            self.elements.flush()
        except KernelSetupError as exc:  # the socket itself failed
            self.observe(Failed(Fault.INTERNAL, f"pinhole close: {exc}"))

    # ---- events -------------------------------------------------------------------------

    def _on_segments(self) -> None:
        assert self.segments is not None
        try:
            record(self.ledger, self.segments.read())
        except SegmentsLost as exc:  # those connections fall back to the estimate
            record(self.ledger, exc.segments)

    def _on_events(self) -> None:
        lost = False
        try:
            events = self.watcher.read(self._choose)
        except ConntrackOverflow as exc:  # some events were lost: re-sync after these
            events, lost = exc.events, True
        if self.segments is not None:  # a FIN's log message is queued before its event
            self._on_segments()
        self._handle(events)
        if lost:
            self._handle(self._resync())

    def _choose(self, ct_id: int, mark: int) -> CtEvent | bool:
        """What of an event to decode (`ConntrackWatcher.read`): a running connection's events
        borrow the tuples of its first one; an event is decoded in full only when an open
        pinhole may have admitted it; the rest (events after the end, of a pinhole closed
        meanwhile) are skipped after reading their id and mark. Chosen when read, handled
        after the whole batch is read: a pinhole that closes in between only costs a decode."""
        run = self.running.get(ct_id)
        if run is not None and run.first.mark == mark:
            return run.first
        pid = id_of(mark)
        return pid is not None and pid in self.pinholes

    def _handle(self, events: list[CtEvent]) -> None:
        for ct in events:
            if ct.ct_id not in self.running and not self._maybe_start(ct):
                continue
            if ct.fin_sent(0) and ct.fin_sent(1):
                self._finish(ct.ct_id, ct)

    def _resync(self) -> list[CtEvent]:
        """After lost events: connections that ended unseen are finished with what is known;
        the dump's entries are to be handled like events (a start or an end that was missed).
        Called after the events read before the loss were handled: a start among them whose
        end was lost is finished here, not left running."""
        snapshot = self.watcher.dump()
        alive = {ct.ct_id for ct in snapshot}
        for ct_id in [cid for cid in self.running if cid not in alive]:
            self._finish(ct_id, self.running[ct_id].first, error="conntrack events lost")
        return snapshot

    def _maybe_start(self, ct: CtEvent) -> bool:
        """Start the connection `ct` if an open pinhole admitted it; True when it started.

        A registered pinhole has admitted no connection seen so far (the first one closes it),
        and its gate admits one conntrack only: so `ct` is that connection even when it has
        ended already (its start and end were both lost): it starts, and the caller finishes
        it at once. Events of a connection whose pinhole is closed are not ours any more."""
        pid = id_of(ct.mark)
        entry = self.pinholes.get(pid) if pid is not None else None
        if entry is None:
            return False
        conn = entry.plane.host_conn_id()
        self._used.add(entry.pinhole.pinhole_id)  # its gate admitted this one and is gone
        self.running[ct.ct_id] = _Running(entry.plane, conn, self.now(), ct)
        peer = Endpoint(ip_address(ct.orig.src), ct.orig.sport)
        entry.plane.feed(DataAccepted(entry.listener, conn, peer))
        return ct.ct_id in self.running  # not rejected meanwhile (KernelPlane.reject)

    def _finish(self, ct_id: int, ct: CtEvent, error: str | None = None) -> None:
        run = self.running.pop(ct_id, None)
        if run is None:
            return
        final = ct if ct.orig_counters is not None else (self.watcher.query(ct.orig) or ct)
        counted = [
            estimate_payload(c, ct.orig.family) if c is not None else None
            for c in (final.orig_counters, final.reply_counters)
        ]
        highs = (counted[0].high if counted[0] else None, counted[1].high if counted[1] else None)
        exact = self.ledger.payloads(final, highs)  # the bounds resolve wraps past 4 GiB
        orig, reply = (
            e if e is not None else (c.estimate if c is not None else 0)
            for e, c in zip(exact, counted, strict=True)
        )
        reset = self.ledger.reset(final)
        self.ledger.forget(final)
        if error is None and ct.tcp_state is TcpState.CLOSE:
            both_ends = exact[0] is not None and exact[1] is not None
            error = "reset" if reset or not both_ends else None
        seconds = self.now() - run.started
        estimated = exact[0] is None or exact[1] is None  # the counters' estimate was used
        run.plane.feed(DataFinished(run.conn, orig, reply, seconds, error, estimated))


class KernelPlane:
    name = "kernel"

    def __init__(
        self,
        data: KernelData,
        feed: Callable[[Event], None],
        next_conn_id: Callable[[], int],
        timeout_ms: int,
        window_life: float = 900.0,
    ) -> None:
        self.data = data
        self.feed = feed
        self.host_conn_id = next_conn_id
        self.timeout_ms = timeout_ms
        self.window_life = window_life  # a TLS session's data window (tls_window.py)
        self._windows: KernelWindows | None = None
        self._open: dict[int, int] = {}  # listener -> pinhole id

    def open(self, action: OpenListener) -> ListenerOpened | ListenerFailed:
        face = Endpoint(action.host, action.port)
        pin = Pinhole(
            self.data.next_id(), action.peer, face, action.target, action.source, self.timeout_ms
        )
        hold: socket.socket | None = None
        if is_local_address(action.host):
            try:
                hold = _hold(face)
            except OSError as exc:
                return ListenerFailed(action.listener, errno.errorcode.get(exc.errno or 0, "?"))
        elif pin.key in self.data.keys:
            return ListenerFailed(action.listener, "EADDRINUSE")
        try:
            self.data.elements.apply(open_ops(pin))
        except KernelSetupError as exc:
            if hold is not None:
                hold.close()
            return ListenerFailed(action.listener, str(exc))
        self.close(action.listener)  # a retry on another port reuses the listener id
        self.data.pinholes[pin.pinhole_id] = _Open(self, action.listener, pin, hold)
        self.data.keys.add(pin.key)
        self._open[action.listener] = pin.pinhole_id
        return ListenerOpened(action.listener, action.port)

    def close(self, listener: int) -> None:
        pid = self._open.pop(listener, None)
        if pid is not None:
            self.data.unregister(pid)

    def connect(self, action: ConnectData) -> None:
        self.feed(DataConnected(action.conn))  # the kernel joined the ends at the first SYN

    def reject(self, conn: int) -> None:
        """The kernel admitted it already (a pinhole closed while its SYN was on the way):
        it is not ftpalg's to carry; it is no longer tracked."""
        for ct_id, run in list(self.data.running.items()):
            if run.plane is self and run.conn == conn:
                del self.data.running[ct_id]

    def open_window(self, action: OpenWindow) -> str | None:
        if self._windows is None:
            assert self.data.loop is not None, "KernelData.start() first"
            window_id = self.data.next_id()
            self._windows = KernelWindows(
                self.data.elements, self.data.loop, window_id, self.window_life
            )
        return self._windows.open(action)

    def finish(self) -> None:
        for listener in list(self._open):
            self.close(listener)
        if self._windows is not None:
            self._windows.close()


def _hold(face: Endpoint) -> socket.socket:
    """A bound, not listening socket on a local face: the port stays ftpalg's."""
    family = socket.AF_INET6 if face.host.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((str(face.host), face.port))
    except OSError:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    return sock
