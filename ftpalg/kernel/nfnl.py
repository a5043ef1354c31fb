"""Set and map elements of ftpalg's nftables table, in-process, through raw nf_tables netlink.

    with SetElements("ftpalg", netns=None) as elements:
        key = (IPv4Address("192.0.2.1"), IPv4Address("198.51.100.2"), Port(40001))
        elements.add("pasv4", key, (Mark(7),), timeout_ms=30_000)
        with elements.batch() as batch:          # one transaction
            batch.remove("pasv4", key)
            batch.add("act4", key, (IPv4Address("203.0.113.5"), Port(2020)))

How this works:

- One ``AF_NETLINK``/``SOCK_RAW`` socket, protocol ``NETLINK_NETFILTER`` (12), per
  :class:`SetElements`; with ``netns=NAME`` it is created inside ``/run/netns/NAME`` by a
  short-lived thread that joins that namespace (the process itself never moves).
- Every call is one nf_tables transaction sent with one ``send`` (the wire format is in
  ``nfnl_wire.py``): the kernel commits all of it or none of it.
- The last element message carries ``NLM_F_ACK``; a message that fails is answered with an
  error without it. nfnetlink runs a batch synchronously inside ``send`` (and does not stop
  at a failed message), so when it returns the errors and then the last message's ack are
  queued: they are read with ``MSG_DONTWAIT`` up to that ack, and a missing ack is an error,
  never a hang. ``NETLINK_CAP_ACK`` keeps error acks small,
  ``NETLINK_EXT_ACK`` makes the kernel point at the failing element, which the error names.
- Remove uses ``NFT_MSG_DESTROYSETELEM`` (Linux 6.3+), which succeeds for an absent element.
  Support is probed once, on the first remove, by a batch without ``BATCH_END`` (the kernel
  aborts it; it never commits) naming a set that cannot exist: ENOENT means known, EINVAL
  unknown. Without it remove falls back to ``NFT_MSG_DELSETELEM`` and repeats the
  transaction without the elements the kernel pointed at as absent (ENOENT).
- Add is nft's ``add element``: an identical element already present is not an error (and
  keeps its expiry unless the timeout differs or ``refresh=True``); the same key with a
  different value is EEXIST and fails the whole transaction.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from ftpalg.kernel.errors import KernelSetupError
from ftpalg.kernel.nfnl_wire import (
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE,
    Data,
    ElementOp,
    Field,
    Mark,
    Msg,
    Port,
    element,
    encode_batch,
    encode_fields,
    group,
    name_attr,
    nla,
    parse_acks,
)

__all__ = [
    "Batch",
    "ElementOp",
    "Field",
    "Mark",
    "NfnlError",
    "Port",
    "SetElements",
    "encode_fields",
]

_NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_RCVBUF = 4 << 20  # one ack per message; an ack skb costs ~1 KiB of receive buffer
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/run/netns"

Failure = tuple[Msg, int, ElementOp | None]  # message, errno, the element it points at


class NfnlError(KernelSetupError):
    """The kernel refused a transaction (and changed nothing); ``errno`` is its answer."""

    def __init__(self, op: str, table: str, set_name: str, errno: int, where: str = "") -> None:
        self.op = op
        self.table = table
        self.set_name = set_name
        self.errno = errno
        name = errno_mod.errorcode.get(errno, str(errno))
        super().__init__(
            f"nf_tables {op} element{where} in set inet {table} {set_name} failed:"
            f" {name} ({os.strerror(errno)})"
        )


def _open_socket() -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_NETFILTER
    )
    try:
        sock.bind((0, 0))
        sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        with contextlib.suppress(OSError):  # without it errors cannot name the element
            sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        except OSError:  # no CAP_NET_ADMIN: as much as net.core.rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_socket_in(netns: str) -> socket.socket:
    """The socket, created by a thread that joins ``/run/netns/<netns>`` and then ends."""
    if "/" in netns or netns in ("", ".", ".."):
        raise KernelSetupError(f"invalid network namespace name {netns!r}")
    path = f"{_NETNS_DIR}/{netns}"
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(_open_socket())
        except BaseException as exc:  # re-raised in the caller's thread
            result.append(exc)

    thread = threading.Thread(target=run, name=f"nfnl-netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise KernelSetupError(f"cannot open nf_tables netlink in netns {netns}: {result[0]}")
    return result[0]


class SetElements:
    """Adds and removes elements of the sets and maps of ``table inet <table>``.

    Each call is one transaction. Not thread-safe: one instance per thread, or a lock. Keep
    the instance open: ``close()`` after a remove blocks for an RCU grace period (measured
    16 ms on 6.18; the kernel flushes its pending element destruction when an nf_tables
    socket goes away, which is also where most of one ``nft delete element`` process's time
    goes).
    Errors: :class:`NfnlError` when the kernel refuses (nothing changed), ``ValueError`` /
    ``TypeError`` for malformed arguments (nothing sent), :class:`KernelSetupError` when the
    socket fails.
    """

    def __init__(self, table: str = "ftpalg", *, netns: str | None = None) -> None:
        self.table = table
        self._table_attr = name_attr(NFTA_SET_ELEM_LIST_TABLE, "table", table)
        try:
            self._sock = _open_socket_in(netns) if netns is not None else _open_socket()
        except OSError as exc:
            raise KernelSetupError(f"cannot open nf_tables netlink socket: {exc}") from exc
        self._sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self._seq = 0
        self._rbuf = bytearray(65536)
        self._set_attrs: dict[str, bytes] = {}
        self.destroy_supported: bool | None = None  # NFT_MSG_DESTROYSETELEM; probed once
        self._deferred: list[tuple[list[ElementOp], Callable[[KernelSetupError], None]]] = []

    @property
    def deferred(self) -> int:
        """Operations waiting for the next transaction (:meth:`defer`)."""
        return sum(len(ops) for ops, _ in self._deferred)

    def defer(self, ops: Iterable[ElementOp], on_error: Callable[[KernelSetupError], None]) -> None:
        """Apply ``ops`` at the front of the next transaction (:meth:`apply`) or at
        :meth:`flush`, whichever comes first: one transaction less for operations that may
        wait. Should the joint transaction fail, each part is applied on its own, so a
        deferred part never fails the caller's; its own failure goes to ``on_error``."""
        self._deferred.append((list(ops), on_error))

    def flush(self) -> None:
        """Apply what :meth:`defer` holds now (failures to their ``on_error``)."""
        self._apply_deferred(self._take_deferred())

    def _take_deferred(self) -> list[tuple[list[ElementOp], Callable[[KernelSetupError], None]]]:
        held, self._deferred = self._deferred, []
        return held

    def _apply_deferred(
        self, held: list[tuple[list[ElementOp], Callable[[KernelSetupError], None]]]
    ) -> None:
        if len(held) > 1:
            try:
                self._apply([op for ops, _ in held for op in ops])
                return
            except NfnlError:  # whose? each part on its own
                pass
        for ops, on_error in held:
            try:
                self._apply(ops)
            except KernelSetupError as exc:
                on_error(exc)

    def add(
        self,
        set_name: str,
        key: Data,
        value: Data | None = None,
        *,
        timeout_ms: int | None = None,
        refresh: bool = False,
    ) -> None:
        """Add one element (``key : value`` for a map); see :meth:`ElementOp.add`."""
        self.apply((ElementOp.add(set_name, key, value, timeout_ms=timeout_ms, refresh=refresh),))

    def remove(self, set_name: str, key: Data, value: Data | None = None) -> None:
        """Remove one element; no error when it is absent. See :meth:`ElementOp.remove`."""
        self.apply((ElementOp.remove(set_name, key, value),))

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Collect operations; apply them as one transaction when the block ends normally."""
        pending = Batch()
        yield pending
        self.apply(pending.ops)

    def apply(self, ops: Iterable[ElementOp]) -> None:
        """Apply ``ops`` in order as one transaction: all of them, or none and NfnlError.

        Deferred operations (:meth:`defer`) go first, in the same transaction."""
        given = list(ops)
        held = self._take_deferred()
        if held:
            try:
                self._apply([*(op for part, _ in held for op in part), *given])
                return
            except NfnlError:  # whose? each part on its own, in the same order
                self._apply_deferred(held)
        self._apply(given)

    def _apply(self, given: list[ElementOp]) -> None:
        todo = given
        if self.destroy_supported is None and any(op.kind == "remove" for op in todo):
            self.destroy_supported = self._probe_destroy()
        while todo:
            failures = self._transact(group(self._table_attr, todo, self._set_attrs))
            if not failures:
                return
            msg, err, op = failures[0]
            if not self.destroy_supported and all(
                f[0].kind == "remove" and f[1] == errno_mod.ENOENT and f[2] is not None
                for f in failures
            ):  # DELSETELEM fallback: leave out the absent elements, try again (the kernel
                # reports the first per message, so this may take one round per absent one)
                absent = {id(f[2]) for f in failures}
                todo = [o for o in todo if id(o) not in absent]
                continue
            where = ""  # the position in the transaction, when there is more than one op
            if len(given) > 1 and op is not None:
                where = f" {next(i for i, o in enumerate(given) if o is op) + 1} of {len(given)}"
            elif len(given) > 1:
                where = f" (one of {len(given)})"
            raise NfnlError(msg.kind, self.table, msg.set_name, err, where)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SetElements:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transact(self, msgs: list[Msg], *, commit: bool = True) -> list[Failure]:
        """Send one batch; its failures (empty: committed)."""
        begin = self._seq = (self._seq + 1) & 0x7FFFFFFF
        for msg in msgs:
            msg.seq = self._seq = self._seq + 1
        self._seq += 1  # BATCH_END
        data = encode_batch(msgs, begin, destroy=bool(self.destroy_supported), commit=commit)
        if len(data) + 1024 > self._sndbuf:
            self._grow_sndbuf(2 * len(data) + 4096)
        try:
            self._sock.send(data)
        except OSError as exc:
            raise KernelSetupError(f"nf_tables netlink send ({len(data)} bytes): {exc}") from exc
        return self._read_acks(begin, {msg.seq: msg for msg in msgs}, msgs[-1].seq)

    def _grow_sndbuf(self, size: int) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        self._sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

    def _read_acks(self, begin: int, by_seq: dict[int, Msg], last: int) -> list[Failure]:
        """Errors of any message, up to the ack of the ``last`` one (the only one asked for)."""
        waiting = True
        failures: list[Failure] = []
        batch_err = 0
        while waiting:
            try:
                n = self._sock.recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break  # the kernel answered inside send(): what is missing never comes
            except OSError as exc:  # ENOBUFS: acks were dropped, the outcome is unknown
                raise KernelSetupError(f"nf_tables netlink acks lost: {exc}") from exc
            for seq, err, offset in parse_acks(self._rbuf, n):
                msg = by_seq.get(seq)
                if msg is not None:
                    waiting = waiting and seq != last
                    if err:
                        failures.append((msg, err, None if offset is None else msg.op_at(offset)))
                elif seq == begin and err:  # the batch as a whole (e.g. the commit) failed
                    batch_err = err
        if not failures and (batch_err or waiting):
            first = by_seq[last] if waiting else next(iter(by_seq.values()))
            failures.append((first, batch_err or errno_mod.EPROTO, None))
        return failures

    def _probe_destroy(self) -> bool:
        """Does the kernel know NFT_MSG_DESTROYSETELEM? (See the module docstring.)"""
        op = ElementOp("remove", "", b"\0\0\0\0")
        elem = element(op)
        head = self._table_attr + nla(NFTA_SET_ELEM_LIST_SET, b"\0")  # the empty set name
        probe = Msg("remove", "", head, [op], [0], [elem], len(elem))
        self.destroy_supported = True
        try:
            failures = self._transact([probe], commit=False)
        finally:
            self.destroy_supported = None
        return not (failures and failures[0][1] == errno_mod.EINVAL)


class Batch:
    """Operations collected by :meth:`SetElements.batch`, applied together at its end."""

    def __init__(self) -> None:
        self.ops: list[ElementOp] = []

    def add(
        self,
        set_name: str,
        key: Data,
        value: Data | None = None,
        *,
        timeout_ms: int | None = None,
        refresh: bool = False,
    ) -> None:
        self.ops.append(ElementOp.add(set_name, key, value, timeout_ms=timeout_ms, refresh=refresh))

    def remove(self, set_name: str, key: Data, value: Data | None = None) -> None:
        self.ops.append(ElementOp.remove(set_name, key, value))
