"""TPROXY policy routing: ``fwmark M lookup T`` plus ``local default dev lo table T``.

How this works: the nftables table (``nft.py``) marks packets that belong to ftpalg's
transparent sockets or that it diverts with ``tproxy``. Those packets are addressed to
somebody else (the real server, the real client); without help the routing decision would
forward them. The rule ``fwmark M lookup T`` sends marked packets to table ``T``, whose only
route ``local 0.0.0.0/0 dev lo`` (and ``local ::/0``) says "every destination is local", so
they are delivered to the socket tproxy/socket-lookup picked.

Subtle rules:

- IPv4 needs ``scope host`` on the local route (pyroute2 would otherwise pick ``universe``
  and the kernel rejects it); IPv6 takes no scope.
- Ownership: ftpalg's rules and routes carry ``proto 121`` (``rtm_protocol``, ``PROTO``), the
  rule matches only the mark's bits (``fwmark M/M``: nft sets the mark with ``| M``, other
  bits of the packet mark stay another tool's). ``install`` refuses, with one line naming the
  item and the option to change, when a rule of another tool uses a bit of the mark or looks
  up the table, or the table holds another route: the default mark 1 and table 100 are the
  standard TPROXY recipe other proxies use too, and sharing them would break both (and
  ftpalg's exit would delete the other tool's routes). Items with ``proto 121`` are
  ftpalg's own, e.g. left by a killed instance (one instance per namespace: ``claim.py``):
  ``install`` keeps them and ``remove`` deletes exactly those, never anything else.
- netlink ``add`` is exclusive (``EEXIST``): ``install`` looks first and also tolerates
  ``EEXIST``, so it is idempotent and safe against a concurrent identical add; ``remove``
  tolerates ``ENOENT``/``ESRCH``.
- pyroute2's sync ``IPRoute`` refuses to run inside a running asyncio loop and its async
  variant does not work under uvloop: these functions are synchronous; call them before the
  loop starts or via ``asyncio.to_thread``.
- No sysctl is required: the local route makes marked packets local, ``IP_TRANSPARENT``
  allows the non-local bind, and reverse-path filtering ignores the mark
  (``src_valid_mark=0``) and checks only the peer's address, which routes normally.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ftpalg.kernel.errors import KernelSetupError

RTN_LOCAL = 2
_ALL_ONES = 0xFFFFFFFF
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_DEFAULT_DST = {4: "0.0.0.0/0", 6: "::/0"}
_NETNS_DIR = "/var/run/netns"
PROTO = 121  # rtm_protocol of ftpalg's rules and routes ("proto 121" in `ip rule`/`ip route`)


def _check(mark: int, table: int, families: Iterable[int]) -> tuple[int, ...]:
    fams = tuple(families)
    if not 1 <= mark <= _ALL_ONES:
        raise ValueError(f"mark must be in 1..0xffffffff, got {mark}")
    # 253..255 are the kernel's default/main/local tables; 0 is "unspecified".
    if not 1 <= table <= _ALL_ONES or table in (253, 254, 255):
        raise ValueError(f"route table must be a table of ftpalg's own, got {table}")
    if any(f not in _FAMILY for f in fams):
        raise ValueError(f"families must be 4 and/or 6, got {fams}")
    return fams


@contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    # IPRoute(netns=NAME) *creates* a missing namespace: refuse instead.
    if netns is not None and (
        "/" in netns or netns in ("", ".", "..") or not os.path.exists(f"{_NETNS_DIR}/{netns}")
    ):
        raise KernelSetupError(f"no such network namespace {netns!r}")
    try:
        ipr = IPRoute(netns=netns) if netns is not None else IPRoute()
    except (OSError, NetlinkError) as exc:
        where = f" in netns {netns}" if netns else ""
        raise KernelSetupError(f"cannot open netlink{where}: {exc}") from exc
    try:
        yield ipr
    finally:
        ipr.close()


def _table_of(msg: Any) -> int:
    return int(msg.get_attr("FRA_TABLE") or msg.get_attr("RTA_TABLE") or msg["table"])


def _ours(rule: Any) -> bool:
    return bool(rule.get_attr("FRA_PROTOCOL") == PROTO)


def _rule_exists(ipr: Any, family: int, mark: int, table: int) -> bool:
    for msg in ipr.get_rules(family=_FAMILY[family]):
        if (
            _ours(msg)
            and msg.get_attr("FRA_FWMARK") == mark
            and msg.get_attr("FRA_FWMASK") == mark
            and _table_of(msg) == table
        ):
            return True
    return False


def _route_exists(ipr: Any, family: int, table: int, lo: int) -> bool:
    for msg in ipr.route("dump", family=_FAMILY[family]):
        if (
            _table_of(msg) == table
            and msg["type"] == RTN_LOCAL
            and msg["dst_len"] == 0
            and msg.get_attr("RTA_OIF") == lo
            and msg["proto"] == PROTO
        ):
            return True
    return False


def _conflict(ipr: Any, family: int, mark: int, table: int) -> str | None:
    """Another tool's rule on a bit of `mark` or on `table`, or its route in `table`."""
    for msg in ipr.get_rules(family=_FAMILY[family]):
        fwmark, mask = msg.get_attr("FRA_FWMARK"), msg.get_attr("FRA_FWMASK")
        if _ours(msg) and fwmark == mark and mask == mark and _table_of(msg) == table:
            continue
        bits = (fwmark or 0) & (_ALL_ONES if mask is None else mask)
        if fwmark is not None and bits & mark:
            return (
                f"ip -{family} rule 'fwmark 0x{fwmark:x} lookup {_table_of(msg)}' of another tool"
                f" uses mark 0x{mark:x}: give ftpalg a mark bit of its own (--tproxy-mark)"
            )
        if _table_of(msg) == table and msg["action"] == 1:  # FR_ACT_TO_TBL
            return (
                f"an ip -{family} rule of another tool looks up table {table}: give ftpalg a"
                " table of its own (--route-table)"
            )
    for msg in ipr.route("dump", family=_FAMILY[family]):
        if _table_of(msg) == table and msg["proto"] != PROTO:
            return (
                f"ip -{family} route table {table} holds routes of another tool: give ftpalg a"
                " table of its own (--route-table)"
            )
    return None


def _rule_spec(family: int, mark: int, table: int) -> dict[str, Any]:
    """ftpalg's rule: the mark's bits only, tagged as ftpalg's."""
    return {
        "family": _FAMILY[family],
        "fwmark": mark,
        "fwmask": mark,
        "table": table,
        "protocol": PROTO,
    }


def _route_spec(family: int, table: int, lo: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "family": _FAMILY[family],
        "type": "local",
        "dst": _DEFAULT_DST[family],
        "oif": lo,
        "table": table,
        "proto": PROTO,
    }
    if family == 4:
        spec["scope"] = "host"
    return spec


def _lo_index(ipr: Any) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise KernelSetupError("no loopback interface 'lo'")
    return int(found[0])


@contextmanager
def _netlink_step(what: str, tolerate: tuple[int, ...], netns: str | None) -> Iterator[None]:
    """Run one netlink change; tolerated errno values are success, others a KernelSetupError."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code in tolerate:
            return
        where = f" in netns {netns}" if netns else ""
        hint = " (is 'lo' up?)" if exc.code == errno.ENETDOWN else ""
        text = exc.args[-1] if exc.args else exc
        raise KernelSetupError(f"{what}{where}: {text}{hint}") from exc


def install(
    mark: int = 1, table: int = 100, families: Iterable[int] = (4, 6), *, netns: str | None = None
) -> None:
    """Add ``fwmark mark lookup table`` and the local default route per family (idempotent)."""
    fams = _check(mark, table, families)
    exists = (errno.EEXIST,)
    with _ipr(netns) as ipr:
        lo = _lo_index(ipr)
        for fam in fams:
            conflict = _conflict(ipr, fam, mark, table)
            if conflict is not None:
                raise KernelSetupError(conflict)
        for fam in fams:
            rule = f"ip -{fam} rule add fwmark 0x{mark:x}/0x{mark:x} lookup {table}"
            with _netlink_step(rule, exists, netns):
                if not _rule_exists(ipr, fam, mark, table):
                    ipr.rule("add", **_rule_spec(fam, mark, table))
            with _netlink_step(f"ip -{fam} route add local default table {table}", exists, netns):
                if not _route_exists(ipr, fam, table, lo):
                    ipr.route("add", **_route_spec(fam, table, lo))


def remove(
    mark: int = 1, table: int = 100, families: Iterable[int] = (4, 6), *, netns: str | None = None
) -> None:
    """Delete what :func:`install` adds; no error for items already gone."""
    fams = _check(mark, table, families)
    gone = (errno.ENOENT, errno.ESRCH)
    with _ipr(netns) as ipr:
        lo = _lo_index(ipr)
        for fam in fams:
            with _netlink_step(f"ip -{fam} rule del fwmark {mark} lookup {table}", gone, netns):
                # Several identical rules can exist (``ip rule add`` by hand is not exclusive).
                for _ in range(16):
                    if not _rule_exists(ipr, fam, mark, table):
                        break
                    ipr.rule("del", **_rule_spec(fam, mark, table))
            with _netlink_step(f"ip -{fam} route del local default table {table}", gone, netns):
                if _route_exists(ipr, fam, table, lo):
                    ipr.route("del", **_route_spec(fam, table, lo))


def remove_all_ours(*, netns: str | None = None) -> tuple[int, int]:
    """Delete every rule and route marked ``proto 121`` (ftpalg's, whatever mark and table
    they use: what a killed instance left); (rules, routes) deleted."""
    gone = (errno.ENOENT, errno.ESRCH)
    rules = routes = 0
    with _ipr(netns) as ipr:
        for fam, family in _FAMILY.items():
            for msg in [m for m in ipr.get_rules(family=family) if _ours(m)]:
                with _netlink_step(f"ip -{fam} rule del (proto {PROTO})", gone, netns):
                    ipr.rule(
                        "del",
                        family=family,
                        priority=msg.get_attr("FRA_PRIORITY"),
                        fwmark=msg.get_attr("FRA_FWMARK"),
                        fwmask=msg.get_attr("FRA_FWMASK"),
                        table=_table_of(msg),
                        protocol=PROTO,
                    )
                    rules += 1
            for msg in [m for m in ipr.route("dump", family=family) if m["proto"] == PROTO]:
                with _netlink_step(f"ip -{fam} route del (proto {PROTO})", gone, netns):
                    spec = _route_spec(fam, _table_of(msg), int(msg.get_attr("RTA_OIF")))
                    ipr.route("del", **spec)
                    routes += 1
    return rules, routes
