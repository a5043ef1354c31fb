"""The nf_tables netlink wire format for set elements (pure: bytes in, bytes out).

How this works:

- :func:`encode_fields` turns typed fields into nft's concatenation bytes: every field is
  padded to a multiple of 4 bytes. IPv4 addresses are 4 bytes and IPv6 addresses 16 bytes in
  network order, an ``inet_service`` (:class:`Port`) is 2 bytes in network order plus 2 zero
  bytes, a ``mark`` (:class:`Mark`) is a host-order u32. A bare ``int`` is refused: it could
  be either.
- :func:`group` packs a list of :class:`ElementOp` into element messages: consecutive
  operations of the same kind on the same set share one message (``NFTA_SET_ELEM_LIST_ELEMENTS``
  holds at most :data:`MAX_ELEMS_PAYLOAD` bytes: an attribute length is a u16). Each message
  remembers where each element starts, so an extended ack's offset names the element.
- :func:`encode_batch` frames them: ``NFNL_MSG_BATCH_BEGIN`` (res_id
  ``NFNL_SUBSYS_NFTABLES``), the messages (add: ``NFT_MSG_NEWSETELEM`` + ``NLM_F_CREATE``,
  which is nft's ``add element``; remove: ``NFT_MSG_DESTROYSETELEM`` or
  ``NFT_MSG_DELSETELEM``), ``NFNL_MSG_BATCH_END`` (left out for a batch that must not commit).
  Only the last message carries ``NLM_F_ACK``: nfnetlink answers every message that fails
  with an ``NLMSG_ERROR`` anyway, and keeps processing the batch after a failure, so the
  last message's ack comes after every error (one ack to read instead of one per message).
- :func:`parse_acks` reads ``NLMSG_ERROR`` messages: (original seq, errno, the extended ack's
  ``NLMSGERR_ATTR_OFFS`` or None).

Constants are from the kernel's include/uapi/linux/netfilter/nf_tables.h, nfnetlink.h and
linux/netlink.h.
"""

from __future__ import annotations

import bisect
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

# linux/netlink.h
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an ack: the original message was cut to its header
NLM_F_ACK_TLVS = 0x200  # in an ack: extended ack attributes follow
NLMSGERR_ATTR_OFFS = 2
NLA_F_NESTED = 0x8000
# linux/netfilter/nfnetlink.h
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 16  # NLMSG_MIN_TYPE
NFNL_MSG_BATCH_END = 17
# linux/netfilter/nf_tables.h
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFT_MSG_DESTROYSETELEM = 30  # Linux 6.3+
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_DATA_VALUE = 1
NFT_DATA_VALUE_MAXLEN = 64
NFT_NAME_MAX = 255  # NFT_TABLE_MAXNAMELEN / NFT_SET_MAXNAMELEN without the NUL
# linux/netfilter.h
NFPROTO_INET = 1

MAX_ELEMS_PAYLOAD = 60000

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=iIHHII")  # nlmsgerr: error, then the original nlmsghdr
_U64_BE = struct.Struct(">Q")
_U16_BE = struct.Struct(">H")
_U32 = struct.Struct("=I")
_NFGEN_INET = struct.pack("=BBH", NFPROTO_INET, 0, 0)
_NFGEN_BATCH = struct.pack("=BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_NESTED_DATA = struct.Struct("=HHHH")  # a nested attribute holding one NFTA_DATA_VALUE
_KEY_NESTED = NFTA_SET_ELEM_KEY | NLA_F_NESTED
_DATA_NESTED = NFTA_SET_ELEM_DATA | NLA_F_NESTED
_LIST_ELEM_NESTED = NFTA_LIST_ELEM | NLA_F_NESTED
_TIMEOUT_HDR = _NLA.pack(12, NFTA_SET_ELEM_TIMEOUT)
_EXPIRATION_HDR = _NLA.pack(12, NFTA_SET_ELEM_EXPIRATION)
_ADD_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
_REMOVE_FLAGS = NLM_F_REQUEST | NLM_F_ACK


class Port(int):
    """An ``inet_service`` field: 2 bytes in network order, padded to 4."""

    __slots__ = ()


class Mark(int):
    """A ``mark`` field (also a ``ct mark`` map value): a host-order u32."""

    __slots__ = ()


Field = IPv4Address | IPv6Address | Port | Mark
Data = Sequence[Field] | bytes  # typed fields, or bytes already encoded


def encode_fields(fields: Iterable[Field]) -> bytes:
    """The kernel's bytes for the concatenation ``fields`` (each padded to 4 bytes)."""
    out = bytearray()
    for item in fields:
        if isinstance(item, IPv4Address | IPv6Address):
            out += item.packed
        elif isinstance(item, Port):
            if not 0 <= item <= 0xFFFF:
                raise ValueError(f"port out of range: {int(item)}")
            out += _U16_BE.pack(item) + b"\0\0"
        elif isinstance(item, Mark):
            if not 0 <= item <= 0xFFFFFFFF:
                raise ValueError(f"mark out of range: {int(item)}")
            out += _U32.pack(item)
        else:
            raise TypeError(f"unsupported field {item!r}: use IPv4Address/IPv6Address/Port/Mark")
    return bytes(out)


def data_bytes(value: Data) -> bytes:
    """``value`` encoded and checked: 4..64 bytes, a multiple of 4."""
    raw = value if isinstance(value, bytes) else encode_fields(value)
    if not raw or len(raw) > NFT_DATA_VALUE_MAXLEN or len(raw) % 4:
        raise ValueError(f"key/value must be 4..64 bytes in 4-byte fields, got {len(raw)}")
    return raw


_SET_NAMES_SEEN: set[str] = set()  # set names already checked (a few; bounded anyway)


def check_set_name(name: str) -> None:
    """ValueError for a set name the kernel would refuse (each name is checked once)."""
    if name not in _SET_NAMES_SEEN:
        name_attr(NFTA_SET_ELEM_LIST_SET, "set", name)
        if len(_SET_NAMES_SEEN) < 1024:
            _SET_NAMES_SEEN.add(name)


def name_attr(atype: int, what: str, name: str) -> bytes:
    """A NUL-terminated name attribute; ValueError for a name the kernel would refuse."""
    raw = name.encode()
    if not raw or len(raw) > NFT_NAME_MAX or b"\0" in raw:
        raise ValueError(f"invalid nftables {what} name {name!r}")
    return nla(atype, raw + b"\0")


@dataclass(frozen=True, slots=True)
class ElementOp:
    """One element operation of a transaction; build with :meth:`add` / :meth:`remove`."""

    kind: Literal["add", "remove"]
    set_name: str
    key: bytes
    value: bytes | None = None
    timeout_ms: int | None = None
    refresh: bool = False

    @classmethod
    def add(
        cls,
        set_name: str,
        key: Data,
        value: Data | None = None,
        *,
        timeout_ms: int | None = None,
        refresh: bool = False,
    ) -> ElementOp:
        """Add ``key`` (``key : value`` for a map).

        ``timeout_ms=None`` uses the set's default timeout. Re-adding an identical element
        succeeds and restarts its clock only when ``timeout_ms`` differs from its current
        timeout, or with ``refresh=True`` (needs ``timeout_ms``; sends
        ``NFTA_SET_ELEM_EXPIRATION = timeout_ms`` too).
        """
        if timeout_ms is not None and not 0 < timeout_ms < 1 << 63:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms}")
        if refresh and timeout_ms is None:
            raise ValueError("refresh=True needs timeout_ms")
        check_set_name(set_name)
        raw_value = None if value is None else data_bytes(value)
        return cls("add", set_name, data_bytes(key), raw_value, timeout_ms, refresh)

    @classmethod
    def remove(cls, set_name: str, key: Data, value: Data | None = None) -> ElementOp:
        """Remove ``key``; absent is not an error.

        ``value`` is sent along for a map, as nft does, but the kernel removes by key alone and
        ignores the value, even a wrong one.
        """
        check_set_name(set_name)
        raw_value = None if value is None else data_bytes(value)
        return cls("remove", set_name, data_bytes(key), raw_value)


def nla(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = 4 + len(payload)
    return _NLA.pack(size, atype) + payload + _PAD[size & 3]


def element(op: ElementOp) -> bytes:
    """``NFTA_LIST_ELEM`` for ``op`` (timeouts only for an add).

    Keys and values are whole 4-byte fields (:func:`data_bytes`), so nothing here needs
    padding: each nested data attribute is two headers packed at once and the bytes."""
    key = op.key
    body = _NESTED_DATA.pack(8 + len(key), _KEY_NESTED, 4 + len(key), NFTA_DATA_VALUE) + key
    value = op.value
    if value is not None:
        body += (
            _NESTED_DATA.pack(8 + len(value), _DATA_NESTED, 4 + len(value), NFTA_DATA_VALUE) + value
        )
    if op.timeout_ms is not None and op.kind == "add":
        ms = _U64_BE.pack(op.timeout_ms)
        body += _TIMEOUT_HDR + ms
        if op.refresh:
            body += _EXPIRATION_HDR + ms
    return _NLA.pack(4 + len(body), _LIST_ELEM_NESTED) + body


@dataclass(slots=True)
class Msg:
    """One element message: its ops, the attributes before the elements, the elements."""

    kind: Literal["add", "remove"]
    set_name: str
    head: bytes  # NFTA_SET_ELEM_LIST_TABLE + NFTA_SET_ELEM_LIST_SET
    ops: list[ElementOp] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # of each element from the nlmsghdr
    elems: list[bytes] = field(default_factory=list)
    size: int = 0
    seq: int = 0

    def op_at(self, offset: int) -> ElementOp | None:
        """The op whose element contains byte ``offset`` of the message, if any."""
        i = bisect.bisect_right(self.offsets, offset) - 1
        return self.ops[i] if i >= 0 else None


def group(table_attr: bytes, ops: Iterable[ElementOp], set_attrs: dict[str, bytes]) -> list[Msg]:
    """Element messages for ``ops``, in order; ``set_attrs`` caches set name attributes."""
    out: list[Msg] = []
    msg: Msg | None = None
    prefix = 0
    for op in ops:
        elem = element(op)
        if (
            msg is None
            or op.kind != msg.kind
            or op.set_name != msg.set_name
            or msg.size + len(elem) > MAX_ELEMS_PAYLOAD
        ):
            set_attr = set_attrs.get(op.set_name)
            if set_attr is None:
                set_attr = name_attr(NFTA_SET_ELEM_LIST_SET, "set", op.set_name)
                set_attrs[op.set_name] = set_attr
            msg = Msg(op.kind, op.set_name, table_attr + set_attr)
            out.append(msg)
            prefix = 16 + 4 + len(msg.head) + 4  # nlmsghdr, nfgenmsg, names, ELEMENTS
        msg.ops.append(op)
        msg.offsets.append(prefix + msg.size)
        msg.elems.append(elem)
        msg.size += len(elem)
    return out


def encode_batch(msgs: Sequence[Msg], begin_seq: int, *, destroy: bool, commit: bool) -> bytes:
    """The batch: BEGIN (``begin_seq``), ``msgs`` (``msg.seq`` must be set), END if ``commit``."""
    remove_type = NFT_MSG_DESTROYSETELEM if destroy else NFT_MSG_DELSETELEM
    chunks = [_HDR.pack(20, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq, 0), _NFGEN_BATCH]
    last = len(msgs) - 1
    for i, msg in enumerate(msgs):
        if msg.kind == "add":
            mtype, flags = NFT_MSG_NEWSETELEM, _ADD_FLAGS
        else:
            mtype, flags = remove_type, _REMOVE_FLAGS
        if i != last:
            flags &= ~NLM_F_ACK  # errors come back all the same; success only for the last
        chunks += (
            _HDR.pack(
                24 + len(msg.head) + msg.size,
                (NFNL_SUBSYS_NFTABLES << 8) | mtype,
                flags,
                msg.seq,
                0,
            ),
            _NFGEN_INET,
            msg.head,
            _NLA.pack(4 + msg.size, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED),
            *msg.elems,
        )
    if commit:
        end_seq = (msgs[-1].seq if msgs else begin_seq) + 1
        chunks += (_HDR.pack(20, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, 0), _NFGEN_BATCH)
    return b"".join(chunks)


def parse_acks(buf: bytes | bytearray, n: int) -> Iterator[tuple[int, int, int | None]]:
    """(original seq, errno or 0, extended ack offset or None) of each ack in ``buf[:n]``."""
    pos = 0
    while pos + 16 <= n:
        length, mtype, flags, _seq, _pid = _HDR.unpack_from(buf, pos)
        if length < 16 or pos + length > n:
            return
        if mtype == NLMSG_ERROR and length >= 36:
            err, olen, _otype, _oflags, oseq, _opid = _ERR.unpack_from(buf, pos + 16)
            offset = None
            if err and flags & NLM_F_ACK_TLVS:
                tlv = pos + 20 + (16 if flags & NLM_F_CAPPED else (olen + 3) & ~3)
                end = pos + length
                while tlv + 4 <= end:
                    alen, atype = _NLA.unpack_from(buf, tlv)
                    if alen < 4:
                        break
                    if atype == NLMSGERR_ATTR_OFFS and alen >= 8:
                        offset = _U32.unpack_from(buf, tlv + 4)[0]
                        break
                    tlv += (alen + 3) & ~3
            yield oseq, -err, offset
        pos += (length + 3) & ~3
