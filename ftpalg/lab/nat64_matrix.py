"""`ftpalg lab --nat64`: the NAT64 matrix (docs/nat64.md) — an IPv6-only client, IPv4-only
servers behind 64:ff9b::/96, ftpalg translating (RFC 6384).

How this works: `run_nat64()` takes a started lab, makes its client IPv6-only with the prefix
routed to the gateway (`nat64.make_ipv6_only`), starts every IPv4 server kind (pyftpdlib,
vsftpd, pure-ftpd, proftpd, and `no-epsv`: pyftpdlib without EPSV and EPRT, which only
ftpalg's PASV/PORT fallback makes usable from IPv6), closes the gateway's forward path and
runs ftpalg with `--listen [::]:21 --nat64-prefix 64:ff9b::/96`. Every client mode of
`clients.NAT64_MODES` (`--quick`: curl only) then downloads and uploads (wget: downloads only)
a file of `--size` bytes from each server at its synthesized address, sha256 checked. Each row
shows the address line as the client saw it and as the server did, from ftpalg's `rewrite`
log events, and what ftpalg sent in the client's command's place (`nat64_translated`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import NAT64_MODES, run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.matrix import FILE_NAME, UPLOAD_NAME, transfer_timeout
from ftpalg.lab.nat64 import (
    PREFIX,
    UPLOADS,
    add_server_address,
    make_ipv6_only,
    nat64_target,
    synthesized,
)
from ftpalg.lab.netns import Lab
from ftpalg.lab.proftpd_server import start_proftpd
from ftpalg.lab.rfc959_server import start_rfc959
from ftpalg.lab.server_base import FtpServer, make_file, sha256_file
from ftpalg.lab.servers import start_server
from ftpalg.lab.table import grid, reason_line, shorten

SERVER_KINDS = ("pyftpdlib", "vsftpd", "pure-ftpd", "proftpd", "no-epsv")
QUICK_MODES = ("curl-epsv", "curl-pasv", "curl-eprt")
LEGEND = (
    "client side: the EPRT the IPv6 client sent, or the 229 reply it received;\n"
    "server side: the line as the IPv4 server received or sent it; 'refused; PASV' / 'PORT':\n"
    "the server refused EPSV / EPRT and ftpalg sent PASV / PORT in their place (RFC 6384).\n"
    "MB/s: file bytes / wall time of the whole client run."
)


@dataclass(frozen=True)
class NatCase:
    client: str  # a key of clients.NAT64_MODES
    server: str  # one of SERVER_KINDS
    upload: bool

    @property
    def label(self) -> str:
        return f"{self.client} {self.server} {'put' if self.upload else 'get'}"


@dataclass(frozen=True)
class NatOutcome:
    ok: bool
    nbytes: int
    seconds: float
    reason: str
    client_cmd: str
    server_cmd: str

    @property
    def mbps(self) -> str:
        return f"{self.nbytes / self.seconds / 1e6:.1f}" if self.ok and self.seconds else "-"


def cases(quick: bool = False) -> list[NatCase]:
    modes = QUICK_MODES if quick else tuple(NAT64_MODES)
    return [
        NatCase(mode, server, upload)
        for server in SERVER_KINDS
        for mode in modes
        for upload in (False, True)
        if not upload or mode in UPLOADS
    ]


class TranslationLines:
    """The newest address line and translation ftpalg logged since the previous call."""

    def __init__(self, alg: AlgProcess) -> None:
        self.alg, self.mark = alg, alg.mark()

    def take(self) -> tuple[str, str]:
        events = self.alg.events(self.mark)
        self.mark = self.alg.mark()
        rewrites = [e for e in events if e.get("event") in ("rewrite", "announce_unchanged")]
        translated = [e for e in events if e.get("event") == "nat64_translated"]
        if not rewrites:
            return "-", "-"
        last = rewrites[-1]
        before, after = shorten(str(last.get("before"))), shorten(str(last.get("after")))
        client, server = (
            (before, after) if last.get("kind") in ("PORT", "EPRT") else (after, before)
        )
        if translated:  # the server refused the client's kind of command: ftpalg's own
            sent, upstream = translated[-1], translated[-1].get("upstream")
            if last.get("kind") in ("PORT", "EPRT"):
                server = f"{server} refused; {upstream}"
            else:
                server = f"{sent.get('client')} refused; {upstream}: {server}"
        return client, server


def start_servers(lab: Lab) -> dict[str, FtpServer]:
    """One server of each kind on the server namespace's IPv4 addresses only."""
    a = lab.addresses
    servers = {
        kind: start_server(lab, kind, a.servers_v4[i]) for i, kind in enumerate(SERVER_KINDS[:3])
    }
    servers["proftpd"] = start_proftpd(lab, add_server_address(lab))
    servers["no-epsv"] = start_rfc959(lab, a.servers_v4[3])
    return servers


def run_case(
    lab: Lab, case: NatCase, server: FtpServer, digest: str, work: Path, size: int
) -> tuple[bool, str, int, float]:
    """(ok, reason, bytes, seconds) of one transfer, sha256 checked."""
    target = nat64_target(server)
    timeout = transfer_timeout(size)
    if case.upload:
        name = f"nat64-{case.client}.bin"
        result = run_transfer(
            lab, case.client, target, server.upload_path(name), work / UPLOAD_NAME, True, timeout
        )
        arrived = server.uploaded(name)
        got = sha256_file(arrived) if result.ok and arrived.exists() else None
        arrived.unlink(missing_ok=True)
    else:
        local = work / "download.bin"
        result = run_transfer(lab, case.client, target, FILE_NAME, local, False, timeout)
        got = result.sha256
        local.unlink(missing_ok=True)
    if not result.ok:
        return False, reason_line(result.detail), 0, result.seconds
    if got != digest:
        return False, f"sha256 mismatch: {got or 'no file'} != {digest}", 0, result.seconds
    return True, "", result.nbytes, result.seconds


def run_nat64(
    lab: Lab,
    size: int,
    quick: bool,
    say: Callable[[str], None],
    tell: Callable[[str], None],
    out: TextIO,
) -> tuple[list[NatOutcome], AlgProcess]:
    """Build the NAT64 set-up in `lab`, run the matrix, print the table; `say` reports a
    step, `tell` a transfer."""
    say("client: IPv6 only (its IPv4 address removed), 64:ff9b::/96 routed to the gateway")
    make_ipv6_only(lab)
    say(f"starting {', '.join(SERVER_KINDS)} on IPv4 only (203.0.113.10-14)")
    servers = start_servers(lab)
    digests = {name: make_file(srv.root, FILE_NAME, size) for name, srv in servers.items()}
    say(f"gateway: forward path closed; starting ftpalg ([::]:21, --nat64-prefix {PREFIX})")
    apply_closed_gateway(lab)
    alg = start_ftpalg(lab, ["--listen", "[::]:21", "--nat64-prefix", str(PREFIX)])
    lab.on_close(lambda: shutil.rmtree(alg.log.parent, ignore_errors=True))
    lines = TranslationLines(alg)
    work = Path(tempfile.mkdtemp(prefix=f"{lab.id}-nat64-"))
    work.chmod(0o755)
    upload_digest = make_file(work, UPLOAD_NAME, size)
    all_cases, outcomes = cases(quick), list[NatOutcome]()
    try:
        for i, case in enumerate(all_cases):
            srv = servers[case.server]
            digest = upload_digest if case.upload else digests[case.server]
            ok, reason, nbytes, secs = run_case(lab, case, srv, digest, work, size)
            client_cmd, server_cmd = lines.take()
            outcome = NatOutcome(ok, nbytes, secs, reason, client_cmd, server_cmd)
            outcomes.append(outcome)
            state = "ok  " if ok else "FAIL"
            line = f"[{i + 1:>3}/{len(all_cases)}] nat64  {case.label:<32} {state}"
            tell(f"{line} {outcome.mbps} MB/s" if ok else f"{line} {reason}")
    finally:
        for leftover in work.iterdir():
            leftover.unlink(missing_ok=True)
        work.rmdir()
    out.write(render(all_cases, outcomes))
    out.flush()
    return outcomes, alg


def keep_text(lab: Lab, alg: AlgProcess) -> str:
    """How to use and end a NAT64 lab left running by --keep."""
    ns = lab.namespaces
    server = synthesized(lab.addresses.servers_v4[0])
    names = " ".join(ns.values())
    return "\n".join(
        [
            "",
            f"The NAT64 lab {lab.id} is up; ftpalg runs in the gateway."
            " Press Ctrl-C here to tear it down.",
            f"  client  (IPv6 only, {lab.addresses.client_v6}):  ip netns exec {ns['cli']} bash",
            f"  gateway:  ip netns exec {ns['gw']} bash",
            f"  servers (IPv4 only, 203.0.113.10-14):  ip netns exec {ns['srv']} bash",
            f"  try:     ip netns exec {ns['cli']} curl -u lab:lab -o /dev/null "
            f"ftp://[{server}]/{FILE_NAME}",
            f"  look:    ip netns exec {ns['gw']} nft list ruleset; tail -f {alg.log}",
            f"  if this process dies without tearing down:  for n in {names}; do "
            "ip netns pids $n | xargs -r kill; ip netns delete $n; done",
            "",
        ]
    )


def render(all_cases: Sequence[NatCase], outcomes: Sequence[NatOutcome]) -> str:
    headers = ["client", "server", "dir", "client side", "server side", "ftpalg", "MB/s"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for case, out in zip(all_cases, outcomes, strict=True):
        result = "ok"
        if not out.ok:
            notes.append(f"[{len(notes) + 1}] {case.label}: {out.reason}")
            result = f"FAIL [{len(notes)}]"
        direction = "put" if case.upload else "get"
        rows.append(
            [case.client, case.server, direction, out.client_cmd, out.server_cmd, result, out.mbps]
        )
    text = [*grid(headers, rows, {6}), "", LEGEND]
    if notes:
        text += ["", *notes]
    good = sum(o.ok for o in outcomes)
    text += ["", f"ftpalg (NAT64 {PREFIX}): {good}/{len(outcomes)} ok"]
    return "\n".join(text) + "\n"
