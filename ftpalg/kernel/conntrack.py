"""Conntrack events and accounting of ftpalg's tagged data connections (ctnetlink).

How this works: when the kernel forwards a data connection itself, a pinhole rule sets the
conntrack mark to a tag. ftpalg learns the rest from ctnetlink:

- :class:`ConntrackWatcher` is a plain ``AF_NETLINK``/``NETLINK_NETFILTER`` socket bound to
  the NEW|UPDATE|DESTROY groups, non-blocking, with a kernel-side BPF filter on the mark
  (``conntrack_wire.mark_filter``) and the same check in Python. ``fileno()`` goes to
  ``loop.add_reader``; ``read()`` drains what is queued and returns :class:`CtEvent` s.
- Start of a data connection: the NEW event (it carries the mark: the pinhole sets it on the
  first SYN, before the conntrack is confirmed and the event sent).
- End of the data: the first UPDATE for which ``CtEvent.fin_sent(d)`` is true, ``d`` being
  the data direction (0: the connection's initiator sends, e.g. a passive-mode STOR; 1: the
  acceptor sends, e.g. a passive-mode RETR). ``CtEvent.ending`` (any FIN) is not enough: a
  receiver that half-closes first puts the conntrack in FIN_WAIT before the data flows.
  In the lab the event was read 0.1 ms (median; max 8 ms over 180 transfers on a busy
  2-core machine) after the receiver saw EOF, and TIME_WAIT within 5 ms of the last
  close(). The DESTROY event can come 10–48 s later (conntrack garbage collection): do not
  wait for it.
- Bytes: events other than DESTROY carry no counters; :meth:`ConntrackTable.get` asks for
  the conntrack by its original tuple (``IPCTNL_MSG_CT_GET``). The counters include IP and
  TCP headers and every retransmission: ``conntrack_payload.estimate_payload`` turns them
  into payload bytes with a bound; ``conntrack_nflog`` gives exact numbers from the SYN and
  FIN sequence numbers.
- Overflow: when events come faster than they are read, the kernel drops them and the next
  ``recv`` fails with ``ENOBUFS``. ``read()`` keeps draining and then raises
  :class:`ConntrackOverflow` (with the events it did decode): the caller must re-sync with
  :meth:`ConntrackWatcher.dump` (the tagged conntracks that exist now) — a tracked
  connection missing from it ended unseen.

Subtle rules:

- With ``nf_conntrack_events=2`` (the default) only conntracks created while a listener is
  bound produce events: construct the watcher before installing pinholes.
  ``conntrack_netns.ensure_conntrack_sysctls`` turns accounting on (needed before the
  connection starts) and events on when off.
- All calls are synchronous and short (one netlink round trip for ``get``); they are safe
  on a running asyncio loop (no pyroute2 sync API involved).
- ``netns``: the sockets are created inside that namespace (on a helper thread; needs
  CAP_SYS_ADMIN for ``setns``, so it is for labs and tests); the caller stays where it is.
  The daemon itself runs in the gateway's namespace and passes None.
- Privileges: subscribing, ``SO_RCVBUFFORCE``, GET and dump need CAP_NET_ADMIN, which
  ``ops/privileges.py`` keeps after dropping root.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import select
import socket
import struct
import time
from collections.abc import Callable

from ftpalg.kernel.conntrack_netns import (
    conntrack_sysctls,
    ensure_conntrack_sysctls,
    netlink_socket,
)
from ftpalg.kernel.conntrack_types import (
    ENDING_STATES,
    Counters,
    CtEvent,
    CtKind,
    CtTuple,
    TcpState,
)
from ftpalg.kernel.conntrack_wire import (
    GROUPS_ALL,
    NLMSG_DONE,
    NLMSG_ERROR,
    WireError,
    decode,
    decode_parsed,
    dump_request,
    error_code,
    event_kind,
    family_of,
    get_request,
    is_entry,
    mark_filter,
    messages,
    peek,
)
from ftpalg.kernel.errors import KernelSetupError

__all__ = [
    "ENDING_STATES",
    "ConntrackOverflow",
    "ConntrackTable",
    "ConntrackWatcher",
    "Counters",
    "CtEvent",
    "CtKind",
    "CtTuple",
    "TcpState",
    "conntrack_sysctls",
    "ensure_conntrack_sysctls",
]

Choose = Callable[[int, int], "CtEvent | bool"]  # ConntrackWatcher.read: (ct_id, mark) -> ...
_SO_ATTACH_FILTER = 26
_RECV_SIZE = 1 << 16  # one event is < 1 KiB; a dump part is at most 32 KiB (netlink_dump)


class ConntrackOverflow(Exception):
    """Events were lost (``ENOBUFS``): re-sync with ``dump()``. ``events`` were still read."""

    def __init__(self, events: list[CtEvent]) -> None:
        super().__init__(f"conntrack events lost (ENOBUFS); {len(events)} read")
        self.events = events


class ConntrackTable:
    """Requests to the conntrack table: one conntrack by tuple, a dump by mark.

    Blocking, with ``timeout`` as the worst case; a GET is one round trip (tens of µs), so it
    is fine on the event loop. Failures are :class:`KernelSetupError`.

    The socket is non-blocking and polled only when nothing is queued: ctnetlink answers a
    GET inside ``send`` (and queues each next part of a dump inside the ``recv`` that takes
    the previous one), so a GET is two system calls, ``send`` and ``recv``. It asks for no
    ACK: the answer (or an ``NLMSG_ERROR`` such as ENOENT) is the only message.
    """

    def __init__(self, netns: str | None = None, timeout: float = 2.0) -> None:
        self._sock = netlink_socket(netns, 1 << 20)
        self._sock.setblocking(False)
        self._sock.bind((0, 0))
        self._timeout = timeout
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def get(self, orig: CtTuple) -> CtEvent | None:
        """The conntrack whose *original* tuple is ``orig`` (with counters), None if absent."""
        found = self._transact(get_request(orig, seq := next(self._seq)), seq, dump=False)
        return found[0] if found else None

    def dump(self, mark: int, mask: int = 0xFFFFFFFF) -> list[CtEvent]:
        """Every conntrack (IPv4 and IPv6) with ``ct mark & mask == mark & mask``."""
        return self._transact(dump_request(mark, mask, seq := next(self._seq)), seq, dump=True)

    def _transact(self, req: bytes, seq: int, dump: bool) -> list[CtEvent]:
        try:
            return self._exchange(req, seq, dump)
        except OSError as exc:  # a timeout, EPERM without CAP_NET_ADMIN, ...
            raise KernelSetupError(f"ctnetlink request failed: {exc}") from exc

    def _recv(self, deadline: float) -> bytes:
        while True:
            try:
                return self._sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                    raise TimeoutError("no answer from ctnetlink") from None

    def _exchange(self, req: bytes, seq: int, dump: bool) -> list[CtEvent]:
        deadline = time.monotonic() + self._timeout
        self._sock.send(req)
        out: list[CtEvent] = []
        while True:
            data = self._recv(deadline)
            for mtype, _flags, mseq, start, end in messages(data):
                if mseq != seq:
                    continue  # a late answer to an earlier, timed-out request
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = -error_code(data, start)
                    if err == 0 and not dump:
                        return out
                    if err == errno.ENOENT and not dump:
                        return []
                    name = errno.errorcode.get(err, str(err))
                    raise KernelSetupError(f"ctnetlink request failed: {name} ({err})")
                if is_entry(mtype):
                    out.append(decode(data, start, end, CtKind.SNAPSHOT))
                    if not dump:
                        return out  # a GET has one answer (and asked for no ACK)


class ConntrackWatcher:
    """Conntrack events of the conntracks whose ``mark & mask == mark & mask``.

    ``groups``: a bitmask of ``GROUP_NEW|GROUP_UPDATE|GROUP_DESTROY`` (all by default).
    ``rcvbuf``: the socket buffer (``SO_RCVBUFFORCE`` as root, else capped by
    ``net.core.rmem_max``); one event takes ~0.5-1 KiB of it. ``kernel_filter=False`` skips
    the BPF filter (the Python check stays). ``max_messages`` bounds one ``read()`` so a
    flood cannot starve the loop; the descriptor stays readable while more is queued.
    """

    def __init__(
        self,
        mark: int,
        mask: int = 0xFFFFFFFF,
        *,
        netns: str | None = None,
        groups: int = GROUPS_ALL,
        rcvbuf: int = 4 << 20,
        kernel_filter: bool = True,
        max_messages: int = 4096,
    ) -> None:
        if not 0 <= mark <= 0xFFFFFFFF or not 0 <= mask <= 0xFFFFFFFF:
            raise ValueError(f"mark and mask must be u32, got {mark:#x}/{mask:#x}")
        self.mark, self.mask, self.netns = mark & mask, mask, netns
        self.max_messages = max_messages
        self.overflows = 0  # ENOBUFS seen since creation
        self._table: ConntrackTable | None = None
        sock = netlink_socket(netns, rcvbuf)
        try:
            if kernel_filter:
                _attach_filter(sock, mark_filter(self.mark, mask))
            sock.setblocking(False)
            sock.bind((0, groups))
        except OSError as exc:
            sock.close()
            raise KernelSetupError(f"cannot subscribe to conntrack events: {exc}") from exc
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()
        if self._table is not None:
            self._table.close()

    def __enter__(self) -> ConntrackWatcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def read(self, choose: Choose | None = None) -> list[CtEvent]:
        """Every queued event (up to ``max_messages``), oldest first, tagged ones only.

        ``choose(ct_id, mark)`` (optional) decides, before the rest of a message is decoded,
        what is decoded: False skips the event, True decodes all of it, an earlier event of
        the same conntrack lends its tuples (which never change) instead of having them
        decoded again; so does an earlier event of the same conntrack (id and mark) in this
        read. Raises :class:`ConntrackOverflow` after draining when the kernel
        dropped events.
        """
        events: list[CtEvent] = []
        batch: dict[int, CtEvent] = {}  # ct_id -> its event decoded in full in this read
        lost = False
        for _ in range(self.max_messages):
            try:
                data = self._sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost = True
                self.overflows += 1
                continue
            for mtype, flags, _seq, start, end in messages(data):
                kind = event_kind(mtype, flags)
                if kind is None:
                    continue
                try:
                    a, ct_id, mark = peek(data, start, end)
                    if (mark & self.mask) != self.mark:
                        continue
                    known = True if choose is None else choose(ct_id, mark)
                    if known is False:
                        continue
                    lender = batch.get(ct_id) if known is True and ct_id else known
                    if isinstance(lender, CtEvent) and lender.mark == mark:
                        tuples = (lender.orig, lender.reply)
                        ct = decode_parsed(data, a, family_of(data, start), kind, tuples)
                    else:  # an earlier event of this read may lend them to the next ones
                        ct = batch[ct_id] = decode_parsed(data, a, family_of(data, start), kind)
                    events.append(ct)
                except WireError:
                    continue  # not a conntrack of an IP family we know (none so far)
        if lost:
            raise ConntrackOverflow(events)
        return events

    @property
    def table(self) -> ConntrackTable:
        """A request socket in the watcher's namespace (created on first use)."""
        if self._table is None:
            self._table = ConntrackTable(self.netns)
        return self._table

    def query(self, orig: CtTuple) -> CtEvent | None:
        """The conntrack with original tuple ``orig`` now (counters included), or None."""
        return self.table.get(orig)

    def dump(self) -> list[CtEvent]:
        """The tagged conntracks that exist now: the re-sync after :class:`ConntrackOverflow`."""
        return self.table.dump(self.mark, self.mask)


def _attach_filter(sock: socket.socket, prog: bytes) -> None:
    """``SO_ATTACH_FILTER`` with a ``struct sock_fprog`` pointing at ``prog``."""
    insns = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("@HP", len(prog) // 8, ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)  # the kernel copies it
