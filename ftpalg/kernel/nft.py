"""ftpalg's own nftables table: render it as text (pure), apply it with ``nft -f -``.

How this works:

- One table, ``table inet <name>``, owned entirely by ftpalg. The script is
  ``add table`` + ``delete table`` + the full definition, applied by nft as one atomic
  transaction: applying it twice leaves the same state, and ``remove`` is the same
  ``add``/``delete`` pair, so it never fails when the table is already gone.
- ``prerouting`` (filter, priority ``mangle``), in this order:
  0. with ``pinholes``: the gate rules (they match only the first SYN of an announced data
     connection, never a socket of ftpalg's); with ``inside_ifaces``: ``iifname != {...}
     tcp dport {21} accept`` — FTP control arriving from elsewhere (a DMZ server published by
     a DNAT) is not ftpalg's, although ftpalg's wildcard listener on port 21 would match
     rule 1 for it and take the connection over.
  1. ``meta l4proto tcp socket transparent 1 meta mark set meta mark | M accept`` — a
     packet that belongs to an existing ``IP_TRANSPARENT`` socket of ftpalg (a transparent
     data listener, the return traffic of a connection dialled from a non-local source) gets
     the mark's bits, and the mark's policy route (``routing.py``) delivers it locally. This
     is why data listeners need no per-port rule. It must come before the tproxy rules: a
     packet of an already diverted control connection must not be matched by them again.
  2. per family with a proxy port: ``[iifname {...}] meta nfproto ipv4 tcp dport {21}
     tproxy ip to :PORT meta mark set meta mark | M accept`` (``ip6`` for IPv6) — new control
     connections go to ftpalg's transparent listener.
- ``forward`` (filter, priority ``filter``), only when ``fail_closed``: a *new* forwarded TCP
  connection that matches a divert rule's selector (same interfaces, family and ports) got
  past ftpalg — its listener was missing or the policy route was absent — and is rejected
  with a TCP reset instead of being routed around the ALG (tproxy alone fails *open*). The
  reject uses the divert selector on purpose: inbound FTP towards servers behind the
  gateway, or a family ftpalg does not serve, is not ftpalg's to block.
- with ``pinholes``: the kernel data plane's gate sets, value maps, the gate rules (in
  ``prerouting``) and the ``data_dnat``/``data_snat`` nat chains (``pinholes.py``).
- nft 1.0.6 rejects ``{ ...; } }`` on one line: every closing brace of a block is on its
  own line.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

from ftpalg.kernel import pinholes
from ftpalg.kernel.errors import KernelSetupError

_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
# Linux dev_valid_name(): 1..15 bytes, no '/', ':' or whitespace; we also refuse quotes and
# backslashes (they would break the nft string) but allow nft's trailing '*' wildcard.
_IFACE_RE = re.compile(r'^[^\s/:"\\]{1,15}$')
_NFT_TIMEOUT_S = 30.0
TABLE = "ftpalg"  # the default name of ftpalg's table (one instance per table: claim.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class NftPlan:
    """What ftpalg's nftables table must do. ``inside_ifaces=()`` means all interfaces."""

    table: str = TABLE
    mark: int = 1
    proxy_port_v4: int | None
    proxy_port_v6: int | None
    ftp_ports: tuple[int, ...] = (21,)
    inside_ifaces: tuple[str, ...] = ()
    fail_closed: bool = True
    pinholes: bool = False  # the kernel data plane's sets, maps and chains (pinholes.py)

    def __post_init__(self) -> None:
        if not _TABLE_RE.match(self.table):
            raise ValueError(f"invalid nftables table name {self.table!r}")
        if not 1 <= self.mark <= 0xFFFFFFFF:
            raise ValueError(f"mark must be in 1..0xffffffff, got {self.mark}")
        for port in (self.proxy_port_v4, self.proxy_port_v6):
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(f"proxy port must be in 1..65535, got {port}")
        if not self.ftp_ports or any(not 1 <= p <= 65535 for p in self.ftp_ports):
            raise ValueError(f"ftp_ports must be 1..65535 and not empty, got {self.ftp_ports}")
        for name in self.inside_ifaces:
            if name in (".", "..") or not _IFACE_RE.match(name):
                raise ValueError(f"invalid interface name {name!r}")

    @property
    def families(self) -> tuple[int, ...]:
        """IP versions (4, 6) that have a proxy port, i.e. that ftpalg diverts."""
        return tuple(
            v for v, port in ((4, self.proxy_port_v4), (6, self.proxy_port_v6)) if port is not None
        )


def _set(items: tuple[str, ...]) -> str:
    return "{ " + ", ".join(items) + " }"


def _selector(plan: NftPlan, version: int) -> str:
    """The match part shared by a family's divert rule and its fail-closed reject."""
    parts = []
    if plan.inside_ifaces:
        parts.append("iifname " + _set(tuple(f'"{name}"' for name in plan.inside_ifaces)))
    parts.append("meta nfproto ipv4" if version == 4 else "meta nfproto ipv6")
    parts.append("tcp dport " + _set(tuple(str(p) for p in sorted(set(plan.ftp_ports)))))
    return " ".join(parts)


def _not_inside(plan: NftPlan) -> str:
    """FTP control traffic that did not arrive on an inside interface: not ftpalg's, even
    when its wildcard listener on port 21 would match `socket transparent 1`."""
    names = _set(tuple(f'"{name}"' for name in plan.inside_ifaces))
    ports = _set(tuple(str(p) for p in sorted(set(plan.ftp_ports))))
    return f"iifname != {names} tcp dport {ports}"


def render(plan: NftPlan) -> str:
    """The complete, idempotent nft script for ``plan`` (pure)."""
    mark = f"0x{plan.mark:x}"
    name = f"inet {plan.table}"
    lines = [
        f"add table {name}",
        f"delete table {name}",
        f"table {name} {{",
    ]
    pinhole_families = (4, 6) if plan.pinholes else ()
    for version in pinhole_families:
        lines += pinholes.render_sets(version)
    lines += [
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority mangle; policy accept;",
    ]
    for version in pinhole_families:
        lines += pinholes.render_gate_rules(version)
    if plan.inside_ifaces and plan.families:
        lines.append(f"\t\t{_not_inside(plan)} accept")
    set_mark = f"meta mark set meta mark | {mark}"  # the mark's bits only (routing.py)
    lines.append(f"\t\tmeta l4proto tcp socket transparent 1 {set_mark} accept")
    for version, port in ((4, plan.proxy_port_v4), (6, plan.proxy_port_v6)):
        if port is not None:
            target = "ip" if version == 4 else "ip6"
            lines.append(
                f"\t\t{_selector(plan, version)} tproxy {target} to :{port} {set_mark} accept"
            )
    lines.append("\t}")
    rejects = plan.fail_closed and plan.families
    if rejects or plan.pinholes:
        lines += [
            "\tchain forward {",
            "\t\ttype filter hook forward priority filter; policy accept;",
        ]
        for version in plan.families if rejects else ():
            lines.append(f"\t\t{_selector(plan, version)} ct state new reject with tcp reset")
        if plan.pinholes:
            lines.append(pinholes.render_log_rule())
        lines.append("\t}")
    if pinhole_families:
        lines += pinholes.render_nat_chains(pinhole_families)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nft(args: list[str], stdin: str | None, netns: str | None) -> str:
    cmd = ["nft", *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    try:
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=_NFT_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise KernelSetupError(f"cannot run {cmd[0]!r}: not installed ({exc.strerror})") from exc
    except subprocess.TimeoutExpired as exc:
        raise KernelSetupError(f"{' '.join(cmd)} timed out after {_NFT_TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
        where = f" in netns {netns}" if netns else ""
        raise KernelSetupError(f"nft {' '.join(args)} failed{where}: {detail}")
    return proc.stdout


def apply(script: str, netns: str | None = None) -> None:
    """Load ``script`` with ``nft -f -`` (atomically); raise KernelSetupError on failure."""
    _nft(["-f", "-"], script, netns)


def remove(table: str = "ftpalg", netns: str | None = None) -> None:
    """Delete ``table inet <table>``; no error when it does not exist."""
    if not _TABLE_RE.match(table):
        raise ValueError(f"invalid nftables table name {table!r}")
    apply(f"add table inet {table}\ndelete table inet {table}\n", netns)


def list_table(table: str = "ftpalg", netns: str | None = None) -> str | None:
    """``nft list table inet <table>`` output, or None when the table does not exist."""
    if not _TABLE_RE.match(table):
        raise ValueError(f"invalid nftables table name {table!r}")
    try:
        return _nft(["list", "table", "inet", table], None, netns)
    except KernelSetupError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise


def forward_chains_dropping(
    mark: int, table: str = "ftpalg", netns: str | None = None
) -> list[str]:
    """Base chains on the forward hook, outside ftpalg's own table, whose policy is drop and
    that have no rule accepting connections whose ct mark carries `mark` (``ct mark & M ==
    M accept``): they would drop what ftpalg's pinholes admit. Names as ``family table
    chain``. An nftables that cannot be listed counts as none (the kernel set-up reports it)."""
    try:
        listing = json.loads(_nft(["-j", "list", "ruleset"], None, netns) or "{}")
    except (KernelSetupError, ValueError):
        return []
    chains: dict[tuple[str, str, str], bool] = {}
    for item in listing.get("nftables", []):
        chain, rule = item.get("chain"), item.get("rule")
        if chain and chain.get("hook") == "forward" and chain.get("policy") == "drop":
            if (chain["family"], chain["table"]) != ("inet", table):
                chains[(chain["family"], chain["table"], chain["name"])] = False
        elif rule:
            key = (rule["family"], rule["table"], rule["chain"])
            text = json.dumps(rule.get("expr", []))
            if key in chains and '"mark"' in text and str(mark) in text and '"accept"' in text:
                chains[key] = True
    return [" ".join(key) for key, ok in chains.items() if not ok]


def forward_blocked(netns: str | None = None) -> str | None:
    """Why the kernel cannot carry ftpalg's data connections: a foreign forward chain with
    policy drop and without `pinholes.OPERATOR_RULE` (None: nothing drops them)."""
    dropping = forward_chains_dropping(pinholes.TAG_BIT, netns=netns)
    if not dropping:
        return None
    rule = pinholes.OPERATOR_RULE
    return f"forward chain {', '.join(dropping)} has policy drop and no rule '{rule}'"
