"""The paths under test: one lab (client — gateway — server namespaces) per path.

How this works: every path gets its *own* lab with its own vsftpd in the server namespace, all
built up front and kept for the whole run, so runs can alternate between paths without
reconfiguring anything and no two paths ever share a client port range, a conntrack table or
a server's TIME_WAIT entries (the collision LAB.md warns about when alternating paths against
one server). Idle labs cost nothing. The paths:

- `direct`: the gateway only routes (forward accept, no NAT, no conntrack). The client talks
  to the server with nobody rewriting anything: the baseline for session rate and latency.
- `kernel`: conntrack + masquerade + the kernel FTP helper (`nf_nat_ftp`): the throughput
  baseline; its CPU cost is softirq time, visible only in the machine-wide column.
- `ftpalg`: ftpalg in transparent mode (TPROXY) on a gateway that forwards nothing.
- `ftpalg-kernel`: the same with `--data-plane kernel`: the gateway forwards only what
  ftpalg's pinholes admit (its forward chain has the one documented rule for the tag).
- `suse`: SuSE ftp-proxy, transparent through REDIRECT (see `bench.peers`).
- `proftpd`: proftpd mod_proxy as a reverse proxy; the client connects to the gateway.

The big file is hard-linked into each server root (server work directories live on the same
tmpfs as the file, see `bench.run`), so it exists once in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bench import peers
from ftpalg.lab.alg import start_ftpalg
from ftpalg.lab.gateway import apply_closed_gateway, apply_kernel_nat, apply_routing
from ftpalg.lab.netns import Lab, LabError
from ftpalg.lab.servers import FtpServer, start_vsftpd

PATHS = ("direct", "kernel", "ftpalg", "ftpalg-kernel", "suse", "proftpd")
LABELS = {
    "direct": "direct (routing only)",
    "kernel": "kernel NAT + ftp helper",
    "ftpalg": "ftpalg (TPROXY)",
    "ftpalg-kernel": "ftpalg, kernel data plane",
    "suse": "SuSE ftp-proxy (REDIRECT)",
    "proftpd": "proftpd mod_proxy (reverse)",
}
NOTES = {
    "direct": "gateway forwards without NAT or conntrack; the server sees the client",
    "kernel": "nft ct helper ftp + masquerade; CPU is softirq (machine-wide column only)",
    "ftpalg": "transparent, forward policy drop, splice data relay, default log level",
    "ftpalg-kernel": "transparent, forward policy drop + the pinhole rule, data through "
    "nftables pinholes (--data-plane kernel)",
    "suse": "transparent via nft redirect + SO_ORIGINAL_DST; no EPSV/EPRT (curl falls "
    "back to PASV/PORT); 227 names the proxy, so clients honour it "
    "(curl --no-ftp-skip-pasv-ip)",
    "proftpd": "no transparent mode: reverse proxy (ProxyRole reverse), the client "
    "connects to the gateway's inside address, port 2121",
}


@dataclass
class BenchPath:
    name: str
    lab: Lab
    server: FtpServer
    host: str  # where the client connects
    port: int
    curl_extra: list[str] = field(default_factory=list)
    pasv_only: bool = False  # no EPSV: session-rate client uses PASV
    honour_pasv: bool = False  # client must use the address in the 227
    proxy_pid: int | None = None  # root of the proxy's process tree
    idle_children: int = 0

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def url(self, path: str) -> str:
        return f"ftp://{self.host}:{self.port}/{path}"


def unavailable(name: str) -> str | None:
    """Why a path cannot be built on this machine, or None."""
    if name == "suse":
        return peers.suse_available()
    if name == "proftpd":
        return peers.proftpd_available()
    return None


def build(name: str, files: dict[str, Path]) -> BenchPath:
    """Build the lab for one path; `files` (name -> path on the same tmpfs) are linked in."""
    lab = Lab(prefix="fb").start()
    try:
        server = start_vsftpd(lab)
        for fname, src in files.items():
            os.link(src, server.root / fname)
        return _configure(name, lab, server)
    except BaseException:
        lab.close()
        raise


def _configure(name: str, lab: Lab, server: FtpServer) -> BenchPath:
    srv = str(server.address)
    if name == "direct":
        apply_routing(lab)
        return BenchPath(name, lab, server, srv, 21)
    if name == "kernel":
        apply_kernel_nat(lab)
        return BenchPath(name, lab, server, srv, 21)
    if name == "ftpalg":
        apply_closed_gateway(lab)
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21"])
        return BenchPath(name, lab, server, srv, 21, proxy_pid=alg.proc.pid)
    if name == "ftpalg-kernel":
        apply_closed_gateway(lab, pinholes=True)
        alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "kernel"])
        return BenchPath(name, lab, server, srv, 21, proxy_pid=alg.proc.pid)
    if name == "suse":
        proc = peers.start_suse(lab)
        return BenchPath(
            name,
            lab,
            server,
            srv,
            21,
            curl_extra=["--no-ftp-skip-pasv-ip"],
            pasv_only=True,
            honour_pasv=True,
            proxy_pid=proc.pid,
        )
    if name == "proftpd":
        proc = peers.start_proftpd(lab, server.address)
        gw = str(lab.addresses.gw_inside_v4)
        return BenchPath(name, lab, server, gw, peers.PROXY_PORT, proxy_pid=proc.pid)
    raise LabError(f"unknown path {name}")
