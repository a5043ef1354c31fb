"""The NAT64 lab: an IPv6-only client reaching IPv4-only servers through 64:ff9b::/96.

How this works: `make_ipv6_only(lab)` takes a started `Lab` and leaves its client IPv6-only:
the client's IPv4 address goes (and with it every IPv4 route; only lo keeps 127.0.0.1) and
64:ff9b::/96 is routed to the gateway's inside address, the route a NAT64 network announces.
The servers stay where they are, bound to IPv4 only; the client reaches 203.0.113.10 at
64:ff9b::cb00:710a (`synthesized`), the address DNS64 would hand it. What the gateway does
with the prefix is the caller's choice: ftpalg with `--nat64-prefix` (its TPROXY rules take
port 21 and the data connections to its listeners on synthesized addresses), or
`start_tayga`: Tayga, a real userspace stateless NAT64 on a tun device, with no FTP ALG —
the NAT64 people deploy, as the baseline. Tayga maps each IPv6 client to an address of its
pool (198.51.100.128/25); the server answers it through the gateway, which routes the pool
to the tun device. Tayga (0.9.2) drops traffic to non-global IPv4 addresses under the
well-known prefix (RFC 6052 §3.1), and the lab's servers have documentation addresses: the
baseline uses the network-specific prefix `NSP` (2001:db8:64::/96) instead, and the same
clients through ftpalg run under that prefix too.

`clients.NAT64_MODES` are the IPv6 client modes through the prefix: curl EPSV, `--disable-epsv`
(PASV) and EPRT (`-P -`), lftp passive/active, Python ftplib passive/active (EPSV/EPRT on
IPv6), wget passive/active (downloads only).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from ftpalg.core.rfc6052 import WELL_KNOWN, embed
from ftpalg.lab.clients import (
    NAT64_MODES,
    FtpTarget,
)
from ftpalg.lab.netns import Lab, LabError, LabUnavailable, wait_until
from ftpalg.lab.server_base import FtpServer

PREFIX = WELL_KNOWN
NSP = IPv6Network("2001:db8:64::/96")  # a network-specific prefix (Tayga's baseline)
TUN = "nat64"
TAYGA_V4 = IPv4Address("198.51.100.1")
TAYGA_V6 = IPv6Address("2001:db8:3::64")  # its own, outside the prefixes
POOL = "198.51.100.128/25"  # the IPv4 addresses Tayga gives IPv6 clients


def synthesized(address: IPv4Address, prefix: IPv6Network = PREFIX) -> IPv6Address:
    """The address DNS64 gives an IPv6-only client for `address`."""
    return embed(prefix, address)


def nat64_target(server: FtpServer, prefix: IPv6Network = PREFIX) -> FtpTarget:
    """Where an IPv6-only client reaches the IPv4 `server`: its synthesized address."""
    if not isinstance(server.address, IPv4Address):
        raise LabError(f"{server.kind} on {server.address} is not an IPv4 server")
    return FtpTarget(synthesized(server.address, prefix), server.port, server.user, server.password)


def make_ipv6_only(lab: Lab, prefixes: tuple[IPv6Network, ...] = (PREFIX,)) -> None:
    """Take the client's IPv4 address (and so its IPv4 routes); route the prefixes to the
    gateway."""
    ifname, gateway = lab.ifnames.client, lab.addresses.gw_inside_v6
    lab.run("cli", ["ip", "-4", "addr", "flush", "dev", ifname], check=True)
    lab.run("cli", ["ip", "-4", "route", "flush", "dev", ifname], check=True)
    for prefix in prefixes:
        route = ["ip", "-6", "route", "add", str(prefix), "via", str(gateway)]
        lab.run("cli", route, check=True)


EXTRA_SERVER_V4 = IPv4Address("203.0.113.14")  # a fifth IPv4 server (the lab has .10-.13)


def add_server_address(lab: Lab, address: IPv4Address = EXTRA_SERVER_V4) -> IPv4Address:
    """One more IPv4 address on the server namespace's interface (for proftpd)."""
    argv = ["ip", "addr", "add", f"{address}/24", "dev", lab.ifnames.server]
    lab.run("srv", argv, check=True)
    return address


def client_ipv4_addresses(lab: Lab) -> list[str]:
    """The client namespace's IPv4 addresses (`ip -4 -o addr`), lo's included."""
    out = lab.run("cli", ["ip", "-4", "-o", "addr", "show"], check=True).stdout
    return [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]


def start_tayga(lab: Lab, prefix: IPv6Network = NSP) -> subprocess.Popen[Any]:
    """Tayga on the gateway for `prefix` (its tun device, routes for the prefix and its
    pool); the lab stops it when it closes. The gateway must forward (`apply_routing`)."""
    binary = shutil.which("tayga") or "/usr/sbin/tayga"
    if not Path(binary).exists():
        raise LabUnavailable("tayga is not installed (apt-get install tayga)")
    work = Path(tempfile.mkdtemp(prefix=f"{lab.id}-tayga-"))
    lab.on_close(lambda: shutil.rmtree(work, ignore_errors=True))
    conf = work / "tayga.conf"
    conf.write_text(
        f"tun-device {TUN}\nipv4-addr {TAYGA_V4}\nipv6-addr {TAYGA_V6}\nprefix {prefix}\n"
        f"dynamic-pool {POOL}\ndata-dir {work}\n"
    )
    lab.run("gw", [binary, "--mktun", "-c", str(conf)], check=True)
    lab.run("gw", ["ip", "link", "set", TUN, "up"], check=True)
    lab.run("gw", ["ip", "-4", "route", "add", POOL, "dev", TUN], check=True)
    lab.run("gw", ["ip", "-6", "route", "add", str(prefix), "dev", TUN], check=True)
    with open(work / "tayga.log", "wb") as log:
        proc = lab.popen("gw", [binary, "-c", str(conf), "--nodetach"], stdout=log, stderr=log)
    if not wait_until(lambda: proc.poll() is not None or _tun_up(lab), timeout=10):
        raise LabError("tayga's tun device did not come up within 10 s")
    if proc.poll() is not None:
        text = (work / "tayga.log").read_text(errors="replace")[-2000:]
        raise LabError(f"tayga exited with {proc.returncode}: {text}")
    return proc


def _tun_up(lab: Lab) -> bool:
    out = lab.run("gw", ["ip", "-o", "link", "show", TUN]).stdout
    return "UP" in out


UPLOADS = tuple(name for name in NAT64_MODES if not name.startswith("wget"))
