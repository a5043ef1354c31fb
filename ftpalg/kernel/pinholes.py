"""Kernel pinholes: an announced data connection that the kernel forwards by itself.

How this works. An expectation (docs/core.md) becomes elements in ftpalg's own table
(`nft.py` renders the sets, maps and chains; `nfnl.py` writes the elements in-process):

- `gate4`/`gate6` (set, key peer . face . port): the single-use gate. The first SYN (SYN
  without ACK) of a new conntrack from `peer` to `face`:`port` finds the key, and the same rule
  deletes it, sets the connection's ct mark from `tag4`/`tag6` and accepts. Nothing else can
  use the key afterwards; a retransmitted SYN belongs to the same conntrack and already carries
  the tag, so the operator's `ct mark` rule lets it through.
- `tag4`/`tag6` (map, same key : mark): the connection's tag, `TAG_BIT | id`. The id names the
  pinhole, so conntrack events tell ftpalg which expectation a connection used.
- `dnat4`/`dnat6` (map, same key : address . port): where the kernel sends the connection when
  that is not `face`:`port` — active mode (to the client's own endpoint), reverse mode (to
  the server), or a passive port ftpalg had to change.
- `snat4`/`snat6` (map, mark : address): the source address the receiver expects (the same
  faces as the relay: the server sees the gateway's outside address, the client sees the
  server's face).

- `win4`/`win6` (set, key peer . face) with `wtag4`/`wtag6` (map, same key : mark): a TLS
  session's data window (core/tls.py): every new connection from `peer` to `face` on a port
  of 1024 or above is tagged (and source-NATed by `snat`) for the life of the session — the
  data connections of a control channel ftpalg cannot read. Not single use.

Value maps are never deleted from the packet path (nft 1.0.6 aborts on packet-path deletes
from IPv6 maps with 36-byte keys); they time out with the gate or are removed when the
expectation ends. Every element carries the expectation's lifetime as its timeout, so an
ftpalg that dies leaves nothing open for longer than that.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpalg.core.messages import Endpoint
from ftpalg.core.wire import Address
from ftpalg.kernel.conntrack_nflog import nflog_rule
from ftpalg.kernel.nfnl_wire import ElementOp, Field, Mark, Port

TAG_BIT = 0x80000000  # ct mark bit: "admitted by an ftpalg pinhole"
ID_MASK = 0x7FFFFFFF
NFLOG_GROUP = 2121  # SYN/FIN/RST of tagged connections, for exact byte counts


def tag_of(pinhole_id: int) -> int:
    return TAG_BIT | (pinhole_id & ID_MASK)


def id_of(mark: int) -> int | None:
    """The pinhole id carried by a ct mark, or None for a connection no pinhole admitted."""
    return mark & ID_MASK if mark & TAG_BIT else None


@dataclass(frozen=True, slots=True)
class Window:
    window_id: int  # from the pinhole ids: one tag space
    peer: Address
    face: Address
    source: Address
    timeout_ms: int

    @property
    def family(self) -> str:
        return "4" if self.face.version == 4 else "6"

    @property
    def key(self) -> tuple[Field, ...]:
        return (self.peer, self.face)

    @property
    def tag(self) -> int:
        return tag_of(self.window_id)


def window_ops(w: Window) -> list[ElementOp]:
    """Elements that open (or refresh: add replaces the timeout) window `w`."""
    f, t = w.family, w.timeout_ms
    return [
        ElementOp.add(f"wtag{f}", w.key, (Mark(w.tag),), timeout_ms=t),
        ElementOp.add(f"snat{f}", (Mark(w.tag),), (w.source,), timeout_ms=t),
        ElementOp.add(f"win{f}", w.key, timeout_ms=t),
    ]


def window_close_ops(w: Window) -> list[ElementOp]:
    f = w.family
    return [
        ElementOp.remove(f"win{f}", w.key),
        ElementOp.remove(f"wtag{f}", w.key),
        ElementOp.remove(f"snat{f}", (Mark(w.tag),)),
    ]


@dataclass(frozen=True, slots=True)
class Pinhole:
    pinhole_id: int
    peer: Address  # the only address that may connect
    face: Endpoint  # where it connects to
    target: Endpoint  # where the kernel delivers it
    source: Address  # the source address the receiver expects to see
    timeout_ms: int

    @property
    def family(self) -> str:
        return "4" if self.face.host.version == 4 else "6"

    @property
    def key(self) -> tuple[Field, ...]:
        return (self.peer, self.face.host, Port(self.face.port))

    @property
    def tag(self) -> int:
        return tag_of(self.pinhole_id)


def open_ops(p: Pinhole) -> list[ElementOp]:
    """Elements that open `p`: values first, the gate last (one transaction anyway)."""
    f, t = p.family, p.timeout_ms
    ops = [ElementOp.add(f"tag{f}", p.key, (Mark(p.tag),), timeout_ms=t)]
    if p.target != p.face:
        target = (p.target.host, Port(p.target.port))
        ops.append(ElementOp.add(f"dnat{f}", p.key, target, timeout_ms=t))
    ops.append(ElementOp.add(f"snat{f}", (Mark(p.tag),), (p.source,), timeout_ms=t))
    ops.append(ElementOp.add(f"gate{f}", p.key, timeout_ms=t))
    return ops


def close_ops(p: Pinhole) -> list[ElementOp]:
    """Elements that close `p` (absent ones are fine: the gate is gone once used)."""
    f = p.family
    ops = [ElementOp.remove(f"gate{f}", p.key), ElementOp.remove(f"tag{f}", p.key)]
    if p.target != p.face:
        ops.append(ElementOp.remove(f"dnat{f}", p.key))
    ops.append(ElementOp.remove(f"snat{f}", (Mark(p.tag),)))
    return ops


OPERATOR_RULE = f"ct mark & 0x{TAG_BIT:x} == 0x{TAG_BIT:x} accept"  # docs/data-plane.md


def render_sets(version: int) -> list[str]:
    """The sets and maps of one family, as lines of the table body."""
    addr = "ipv4_addr" if version == 4 else "ipv6_addr"
    key = f"{addr} . {addr} . inet_service"
    v = str(version)
    return [
        f"\tset gate{v} {{",
        f"\t\ttype {key}; flags timeout;",
        "\t}",
        f"\tmap tag{v} {{",
        f"\t\ttype {key} : mark; flags timeout;",
        "\t}",
        f"\tmap dnat{v} {{",
        f"\t\ttype {key} : {addr} . inet_service; flags timeout;",
        "\t}",
        f"\tmap snat{v} {{",
        f"\t\ttype mark : {addr}; flags timeout;",
        "\t}",
        f"\tset win{v} {{",
        f"\t\ttype {addr} . {addr}; flags timeout;",
        "\t}",
        f"\tmap wtag{v} {{",
        f"\t\ttype {addr} . {addr} : mark; flags timeout;",
        "\t}",
    ]


def render_gate_rules(version: int) -> list[str]:
    """Rules for the filter prerouting chain: consume a gate, tag the conntrack."""
    ip = "ip" if version == 4 else "ip6"
    v = str(version)
    key = f"{ip} saddr . {ip} daddr . tcp dport"
    pair = f"{ip} saddr . {ip} daddr"
    return [
        f"\t\tmeta nfproto ipv{v} tcp flags & (syn | ack) == syn ct state new {key} @gate{v}"
        f" ct mark set {key} map @tag{v} delete @gate{v} {{ {key} }} accept",
        f"\t\tmeta nfproto ipv{v} tcp flags & (syn | ack) == syn ct state new"
        f" tcp dport >= 1024 {pair} @win{v} ct mark set {pair} map @wtag{v} accept",
    ]


def render_log_rule() -> str:
    """For a forward chain: log SYN, FIN and RST of tagged connections (their sequence
    numbers give exact payload byte counts; conntrack_nflog.py)."""
    return "\t\t" + nflog_rule(TAG_BIT, TAG_BIT, NFLOG_GROUP)


def render_nat_chains(versions: tuple[int, ...]) -> list[str]:
    """The nat chains that send a tagged connection where its pinhole says."""
    tagged = f"ct mark & 0x{TAG_BIT:x} == 0x{TAG_BIT:x}"
    dnat = ["\tchain data_dnat {", "\t\ttype nat hook prerouting priority dstnat; policy accept;"]
    snat = ["\tchain data_snat {", "\t\ttype nat hook postrouting priority srcnat; policy accept;"]
    for version in versions:
        ip = "ip" if version == 4 else "ip6"
        v = str(version)
        key = f"{ip} saddr . {ip} daddr . tcp dport"
        dnat.append(f"\t\tmeta nfproto ipv{v} {tagged} dnat {ip} to {key} map @dnat{v}")
        snat.append(f"\t\tmeta nfproto ipv{v} {tagged} snat {ip} to ct mark map @snat{v}")
    return [*dnat, "\t}", *snat, "\t}"]
