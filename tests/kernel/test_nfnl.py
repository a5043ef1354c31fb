"""nf_tables set elements over raw netlink (ftpalg.kernel.nfnl): the wire format (pure, checked
against pyroute2's independent decoder) and the real kernel in private namespaces (lab):
contents and timeouts read back with ``nft -j``, errors, atomicity, 1000-element batches, the
DELSETELEM fallback, and the elements working on the packet path."""

from __future__ import annotations

import json
import struct
import time
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink.nftsocket import nft_set_elem_list_msg

from ftpalg.kernel import KernelSetupError
from ftpalg.kernel.nfnl import ElementOp, Mark, NfnlError, Port, SetElements, encode_fields
from ftpalg.kernel.nfnl_wire import (
    NFTA_SET_ELEM_LIST_TABLE,
    encode_batch,
    group,
    nla,
    parse_acks,
)

V4 = IPv4Address
V6 = IPv6Address
C4, S4, G4 = V4("192.0.2.1"), V4("192.0.2.2"), V4("203.0.113.5")
C6, S6 = V6("2001:db8::1"), V6("2001:db8::2")

RULESET = """\
table inet ftpalg {
\tset pasv4k {
\t\ttype ipv4_addr . ipv4_addr . inet_service; flags timeout; timeout 30s;
\t}
\tset pasv6k {
\t\ttype ipv6_addr . ipv6_addr . inet_service; flags timeout; timeout 30s;
\t}
\tmap pasv4 {
\t\ttype ipv4_addr . ipv4_addr . inet_service : mark; flags timeout; timeout 30s;
\t}
\tmap act4 {
\t\ttype ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout;
\t\ttimeout 30s;
\t}
}
"""

# the packet path: gates on input (v4, v6) and a DNAT map for locally generated connections
RULES = """\
table inet ftpalg {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 40001 ip saddr . ip daddr . tcp dport @pasv4k accept
\t\ttcp dport 40001 ip6 saddr . ip6 daddr . tcp dport @pasv6k accept
\t\ttcp dport 40001 reject with tcp reset
\t}
\tchain nat_out {
\t\ttype nat hook output priority -100; policy accept;
\t\tdnat ip to ip saddr . ip daddr . tcp dport map @act4
\t}
}
"""


# -- the wire format (no root needed) ---------------------------------------------------------


def test_encode_fields() -> None:
    assert encode_fields((C4, S4, Port(21))) == bytes([192, 0, 2, 1, 192, 0, 2, 2, 0, 21, 0, 0])
    assert encode_fields((C6, Port(0x1234))) == C6.packed + b"\x12\x34\0\0"
    assert encode_fields((Mark(7),)) == struct.pack("=I", 7)  # host order
    assert encode_fields((G4, Port(2020))) == G4.packed + b"\x07\xe4\0\0"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ((21,), TypeError),  # a bare int: port or mark?
        (("192.0.2.1",), TypeError),
        ((Port(65536),), ValueError),
        ((Mark(-1),), ValueError),
    ],
)
def test_encode_fields_refuses(fields: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_fields(fields)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ElementOp.add("", (C4,)),
        lambda: ElementOp.add("a\0b", (C4,)),
        lambda: ElementOp.add("s", b"\1\2\3"),  # not 4-byte fields
        lambda: ElementOp.add("s", b"\0" * 68),  # longer than NFT_DATA_VALUE_MAXLEN
        lambda: ElementOp.add("s", (C4,), timeout_ms=0),
        lambda: ElementOp.add("s", (C4,), refresh=True),  # refresh needs timeout_ms
        lambda: ElementOp.remove("s", ()),
    ],
    ids=["empty-set", "nul-in-name", "odd-length", "too-long", "zero-timeout", "refresh", "empty"],
)
def test_op_validation(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


def test_batch_decodes_with_pyroute2() -> None:
    """Our hand-packed messages, read back by pyroute2's nf_tables message classes."""
    table = nla(NFTA_SET_ELEM_LIST_TABLE, b"ftpalg\0")
    ops = [
        ElementOp.add("act4", (C4, S4, Port(21)), (G4, Port(2020)), timeout_ms=5000, refresh=True),
        ElementOp.add("act4", (C4, S4, Port(22)), (G4, Port(2021))),
        ElementOp.remove("pasv6k", (C6, S6, Port(23))),
    ]
    msgs = group(table, ops, {})
    assert [(m.kind, m.set_name, len(m.ops)) for m in msgs] == [
        ("add", "act4", 2),
        ("remove", "pasv6k", 1),
    ]
    for seq, msg in enumerate(msgs, start=101):
        msg.seq = seq
    data = encode_batch(msgs, 100, destroy=True, commit=True)
    pos, seen = 0, []
    while pos < len(data):
        length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
        seen.append((hex(mtype), hex(flags), seq))
        if mtype >> 8 == 10:  # NFNL_SUBSYS_NFTABLES
            msg = nft_set_elem_list_msg(data[pos : pos + length])
            msg.decode()
            assert msg.get_attr("NFTA_SET_ELEM_LIST_TABLE") == "ftpalg"
            ours = msgs[seq - 101]
            assert msg.get_attr("NFTA_SET_ELEM_LIST_SET") == ours.set_name
            elems = msg.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
            assert [e.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE") for e in elems] == [
                op.key for op in ours.ops
            ]
            if ours.kind == "add":
                assert elems[0].get_attr("NFTA_SET_ELEM_TIMEOUT") == 5000
                assert elems[0].get_attr("NFTA_SET_ELEM_EXPIRATION") == 5000
                assert elems[1].get_attr("NFTA_SET_ELEM_TIMEOUT") is None
                values = [
                    e.get_attr("NFTA_SET_ELEM_DATA").get_attr("NFTA_DATA_VALUE") for e in elems
                ]
                assert values == [op.value for op in ours.ops]
            # each recorded offset is where an NFTA_LIST_ELEM (nested, type 1) starts
            for offset in ours.offsets:
                assert struct.unpack_from("=H", data, pos + offset + 2)[0] == 0x8001
        pos += length
    assert seen == [
        ("0x10", "0x1", 100),  # BATCH_BEGIN
        ("0xa0c", "0x401", 101),  # NEWSETELEM, REQUEST|CREATE (errors come without ACK)
        ("0xa1e", "0x5", 102),  # DESTROYSETELEM, REQUEST|ACK
        ("0x11", "0x1", 103),  # BATCH_END
    ]
    no_commit = encode_batch(msgs, 100, destroy=False, commit=False)
    types = [struct.unpack_from("=H", no_commit, p + 4)[0] for p in _offsets(no_commit)]
    assert types == [0x10, 0xA0C, 0xA0E]  # the remove as DELSETELEM (14), no BATCH_END


def _offsets(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        pos += struct.unpack_from("=I", data, pos)[0]
    return out


def test_parse_acks_with_extended_offset() -> None:
    ok = struct.pack("=IHHII", 36, 2, 0x100, 7, 1) + struct.pack("=iIHHII", 0, 64, 0xA0C, 5, 7, 0)
    tlv = struct.pack("=HHI", 8, 2, 112)  # NLMSGERR_ATTR_OFFS
    bad = struct.pack("=IHHII", 44, 2, 0x300, 8, 1) + struct.pack(
        "=iIHHII", -17, 64, 0xA0C, 5, 8, 0
    )
    buf = ok + bad + tlv
    assert list(parse_acks(buf, len(buf))) == [(7, 0, None), (8, 17, 112)]


def test_missing_namespace_is_a_setup_error() -> None:
    with pytest.raises(KernelSetupError, match="no-such-ns"):
        SetElements(netns="ftpalg-nfnl-no-such-ns")


# -- the real kernel ------------------------------------------------------------------------------


def _load(lab: Any, ns: str, script: str = RULESET) -> None:
    lab.sh(ns, "sh", "-c", f"nft -f - <<'EOF'\n{script}EOF\n")


def _value(obj: Any) -> Any:
    if isinstance(obj, dict) and "concat" in obj:
        return tuple(obj["concat"])
    return obj


def _listing(lab: Any, ns: str, name: str) -> dict[Any, dict[str, Any]]:
    """{key: {"value": ..., "timeout": s or None, "expires": s}} of set/map ``name``."""
    kind = "map" if name in ("pasv4", "act4") else "set"
    doc = json.loads(lab.sh(ns, "nft", "-j", "list", kind, "inet", "ftpalg", name))
    obj = next(item[kind] for item in doc["nftables"] if kind in item)
    out: dict[Any, dict[str, Any]] = {}
    for entry in obj.get("elem", []):
        key, value = (entry[0], entry[1]) if kind == "map" else (entry, None)
        meta = key["elem"] if isinstance(key, dict) and "elem" in key else {"val": key}
        out[_value(meta["val"])] = {
            "value": _value(value),
            "timeout": meta.get("timeout"),
            "expires": meta.get("expires"),
        }
    return out


def _ns(lab: Any) -> tuple[str, SetElements]:
    ns = lab.netns("nfnl")
    _load(lab, ns)
    return ns, SetElements(netns=ns)


@pytest.mark.lab
def test_add_and_remove_in_sets_and_maps(lab: Any) -> None:
    ns, el = _ns(lab)
    with el:
        el.add("pasv4k", (C4, S4, Port(40001)), timeout_ms=5000)
        el.add("pasv4k", (C4, S4, Port(40002)))  # the set's default, 30 s
        el.add("pasv6k", (C6, S6, Port(65535)), timeout_ms=12_000)
        el.add("pasv4", (C4, S4, Port(40001)), (Mark(0x80000007),))
        el.add("act4", (S4, C4, Port(20)), (G4, Port(2020)), timeout_ms=3000)
        v4 = _listing(lab, ns, "pasv4k")
        assert set(v4) == {("192.0.2.1", "192.0.2.2", 40001), ("192.0.2.1", "192.0.2.2", 40002)}
        short, default = (
            v4[("192.0.2.1", "192.0.2.2", 40001)],
            v4[("192.0.2.1", "192.0.2.2", 40002)],
        )
        assert short["timeout"] == 5 and 4 <= short["expires"] <= 5
        assert default["timeout"] is None and 29 <= default["expires"] <= 30  # nft omits it
        v6 = _listing(lab, ns, "pasv6k")
        assert list(v6) == [("2001:db8::1", "2001:db8::2", 65535)]
        assert 11 <= v6[("2001:db8::1", "2001:db8::2", 65535)]["expires"] <= 12
        marks = _listing(lab, ns, "pasv4")
        assert {k: v["value"] for k, v in marks.items()} == {
            ("192.0.2.1", "192.0.2.2", 40001): 0x80000007
        }
        dnat = _listing(lab, ns, "act4")
        assert {k: v["value"] for k, v in dnat.items()} == {
            ("192.0.2.2", "192.0.2.1", 20): ("203.0.113.5", 2020)
        }
        assert dnat[("192.0.2.2", "192.0.2.1", 20)]["timeout"] == 3

        el.remove("pasv4k", (C4, S4, Port(40001)))
        el.remove("pasv6k", (C6, S6, Port(65535)))
        el.remove("act4", (S4, C4, Port(20)), (G4, Port(2020)))
        el.remove("pasv4", (C4, S4, Port(40001)), (Mark(1),))  # the kernel ignores the value
        assert set(_listing(lab, ns, "pasv4k")) == {("192.0.2.1", "192.0.2.2", 40002)}
        assert _listing(lab, ns, "pasv6k") == {}
        assert _listing(lab, ns, "act4") == {}
        assert _listing(lab, ns, "pasv4") == {}
        assert el.destroy_supported is True  # 6.3+; this project's kernels are 6.18


@pytest.mark.lab
@pytest.mark.parametrize("destroy", [True, False], ids=["destroy", "delsetelem-fallback"])
def test_removing_absent_elements_does_not_raise(lab: Any, destroy: bool) -> None:
    ns, el = _ns(lab)
    with el:
        if not destroy:
            el.destroy_supported = False  # as on a kernel older than 6.3
        el.remove("pasv4k", (C4, S4, Port(1)))
        el.add("pasv4k", (C4, S4, Port(2)))
        el.add("pasv4k", (C4, S4, Port(4)))
        with el.batch() as batch:  # absent, present, absent, present: the present ones go
            batch.remove("pasv4k", (C4, S4, Port(1)))
            batch.remove("pasv4k", (C4, S4, Port(2)))
            batch.remove("pasv4k", (C4, S4, Port(3)))
            batch.add("pasv4k", (C4, S4, Port(5)))
            batch.remove("pasv4k", (C4, S4, Port(4)))
        assert set(_listing(lab, ns, "pasv4k")) == {("192.0.2.1", "192.0.2.2", 5)}
        # a missing set is still an error (ENOENT too, but not pointing at an element)
        with pytest.raises(NfnlError, match="remove element in set inet ftpalg nosuch") as info:
            el.remove("nosuch", (C4, S4, Port(1)))
        assert info.value.errno == 2


@pytest.mark.lab
def test_duplicate_key_with_other_value_raises_and_aborts_the_transaction(lab: Any) -> None:
    ns, el = _ns(lab)
    key = (C4, S4, Port(40001))
    with el:
        el.add("pasv4", key, (Mark(7),))
        el.add("pasv4", key, (Mark(7),))  # identical: fine, nothing changes
        with pytest.raises(NfnlError) as info:
            el.add("pasv4", key, (Mark(8),))
        assert info.value.errno == 17
        assert (info.value.op, info.value.set_name) == ("add", "pasv4")
        assert str(info.value) == (
            "nf_tables add element in set inet ftpalg pasv4 failed: EEXIST (File exists)"
        )
        other = (V4("192.0.2.9"), S4, Port(40001))
        clash = r"add element 2 of 3 in set .* pasv4 .*EEXIST"
        with pytest.raises(NfnlError, match=clash), el.batch() as batch:
            batch.add("pasv4", other, (Mark(1),))
            batch.add("pasv4", key, (Mark(9),))
            batch.add("pasv4k", other)
        assert {k: v["value"] for k, v in _listing(lab, ns, "pasv4").items()} == {
            ("192.0.2.1", "192.0.2.2", 40001): 7
        }
        assert _listing(lab, ns, "pasv4k") == {}  # nothing of the batch was committed
        # replacing in one transaction: remove + add of the same key
        with el.batch() as batch:
            batch.remove("pasv4", key)
            batch.add("pasv4", key, (Mark(9),))
        assert _listing(lab, ns, "pasv4")[("192.0.2.1", "192.0.2.2", 40001)]["value"] == 9


@pytest.mark.lab
def test_deferred_operations_join_the_next_transaction(lab: Any) -> None:
    """defer(): the ops go first in the next transaction (one send), or at flush(); a failing
    deferred part never fails the caller's operations, it goes to its own on_error."""
    ns, el = _ns(lab)
    key, other = (C4, S4, Port(40001)), (C4, S4, Port(40002))
    errors: list[KernelSetupError] = []
    sends = 0
    with el:
        real_send = el._sock.send

        def send(data: bytes) -> int:
            nonlocal sends
            sends += 1
            return real_send(data)

        el._sock = _SendCounter(el._sock, send)  # type: ignore[assignment]
        el.remove("pasv4", other)  # the one-time DESTROYSETELEM probe happens here
        el.add("pasv4", key, (Mark(7),))
        el.defer([ElementOp.remove("pasv4", key)], errors.append)
        assert el.deferred == 1 and 7 in _listing_values(lab, ns)  # still there
        sends = 0
        el.add("pasv4", key, (Mark(8),))  # the remove first: a replacement, one transaction
        assert (sends, el.deferred, _listing_values(lab, ns)) == (1, 0, [8])
        el.defer([ElementOp.remove("pasv4", key)], errors.append)
        el.flush()
        assert (el.deferred, _listing_values(lab, ns), errors) == (0, [], [])
        el.defer([ElementOp.add("nosuch", key)], errors.append)  # fails the joint transaction
        el.add("pasv4", other, (Mark(9),))
        assert _listing_values(lab, ns) == [9]
        assert len(errors) == 1 and "nosuch" in str(errors[0])
        el.flush()  # nothing held: nothing sent
        assert el.deferred == 0


class _SendCounter:
    def __init__(self, sock: Any, send: Any) -> None:
        self._sock, self.send = sock, send

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _listing_values(lab: Any, ns: str) -> list[Any]:
    return sorted(v["value"] for v in _listing(lab, ns, "pasv4").values())


@pytest.mark.lab
def test_kernel_errors_name_operation_set_and_errno(lab: Any) -> None:
    ns, el = _ns(lab)
    with el:
        with pytest.raises(NfnlError, match=r"add element in set inet ftpalg nosuch .*ENOENT"):
            el.add("nosuch", (C4, S4, Port(1)))
        with pytest.raises(NfnlError, match=r"pasv4k failed: EINVAL"):
            el.add("pasv4k", (C4, Port(1)))  # key too short
        with pytest.raises(NfnlError, match=r"pasv4 failed: EINVAL"):
            el.add("pasv4", (C4, S4, Port(1)))  # a map element needs a value
    with SetElements("other", netns=ns) as missing, pytest.raises(NfnlError, match="ENOENT"):
        missing.add("pasv4k", (C4, S4, Port(1)))


@pytest.mark.lab
def test_batches_of_1000_appear_completely(lab: Any) -> None:
    ns, el = _ns(lab)
    keys = [(V4(int(C4) + i // 250), S4, Port(10_000 + i)) for i in range(1000)]
    with el:
        el.apply(
            ElementOp.add("pasv4", k, (Mark(i + 1),), timeout_ms=60_000) for i, k in enumerate(keys)
        )
        got = _listing(lab, ns, "pasv4")
        assert len(got) == 1000
        for i, (client, server, port) in enumerate(keys):
            entry = got[(str(client), str(server), int(port))]
            assert entry["value"] == i + 1 and entry["timeout"] == 60
        # 1000 operations alternating between two sets: 1000 messages, 1000 acks
        with el.batch() as batch:
            for k in keys:
                batch.remove("pasv4", k)
                batch.add("pasv4k", k)
        assert _listing(lab, ns, "pasv4") == {}
        assert len(_listing(lab, ns, "pasv4k")) == 1000


@pytest.mark.lab
def test_timeout_refresh_on_re_add(lab: Any) -> None:
    """An identical re-add keeps the expiry; a changed timeout or ``refresh=True`` restarts it."""
    ns, el = _ns(lab)
    key = (C4, S4, Port(40001))
    with el:
        el.add("pasv4k", key, timeout_ms=20_000)
        time.sleep(2.2)

        def expires() -> int:
            return int(_listing(lab, ns, "pasv4k")[("192.0.2.1", "192.0.2.2", 40001)]["expires"])

        assert expires() <= 17
        el.add("pasv4k", key, timeout_ms=20_000)
        assert expires() <= 17
        el.add("pasv4k", key, timeout_ms=20_000, refresh=True)
        assert expires() >= 19
        el.add("pasv4k", key, timeout_ms=25_000)
        assert expires() >= 24


_SERVER = r"""
import socket, threading
def serve(family, addr, port, tag):
    lsock = socket.socket(family)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, port))
    lsock.listen(16)
    def loop():
        while True:
            conn, _ = lsock.accept()
            conn.sendall(tag)
            conn.close()
    threading.Thread(target=loop, daemon=True).start()
serve(socket.AF_INET, "192.0.2.2", 40001, b"A")
serve(socket.AF_INET, "192.0.2.2", 40002, b"B")
serve(socket.AF_INET6, "2001:db8::2", 40001, b"C")
print("ready", flush=True)
threading.Event().wait()
"""

_PROBE = r"""
import socket
out = []
for family, src, dst, port in ((socket.AF_INET, "192.0.2.1", "192.0.2.2", 40001),
                                (socket.AF_INET6, "2001:db8::1", "2001:db8::2", 40001),
                                (socket.AF_INET, "192.0.2.1", "192.0.2.2", 40009)):
    s = socket.socket(family)
    s.settimeout(3)
    s.bind((src, 0))
    try:
        s.connect((dst, port))
        out.append(s.recv(1).decode())
    except OSError as exc:
        out.append(type(exc).__name__)
    finally:
        s.close()
print(" ".join(out))
"""


@pytest.mark.lab
def test_elements_work_on_the_packet_path(lab: Any) -> None:
    """Gate sets admit exactly their (saddr, daddr, dport); the DNAT map's value is a target."""
    ns, el = _ns(lab)
    _load(lab, ns, RULES)
    for addr in ("192.0.2.1/32", "192.0.2.2/32"):
        lab.sh(ns, "ip", "addr", "add", addr, "dev", "lo")
    for addr in ("2001:db8::1/128", "2001:db8::2/128"):
        lab.sh(ns, "ip", "-6", "addr", "add", addr, "dev", "lo", "nodad")
    server = lab.spawn(ns, _SERVER)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    refused = "ConnectionRefusedError"
    with el:
        assert lab.python(ns, _PROBE).split() == [refused] * 3
        with el.batch() as batch:
            batch.add("pasv4k", (C4, S4, Port(40001)))
            batch.add("pasv6k", (C6, S6, Port(40001)))
            batch.add("act4", (C4, S4, Port(40009)), (S4, Port(40002)))
        assert lab.python(ns, _PROBE).split() == ["A", "C", "B"]
        with el.batch() as batch:
            batch.remove("pasv4k", (C4, S4, Port(40001)))
            batch.remove("pasv6k", (C6, S6, Port(40001)))
            batch.remove("act4", (C4, S4, Port(40009)))
        assert lab.python(ns, _PROBE).split() == [refused] * 3
