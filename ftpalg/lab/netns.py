"""Three network namespaces and two veth pairs: client — gateway — server.

How this works: `Lab.start()` creates three namespaces with a random per-lab prefix
(`fa<6 hex>-cli`, `-gw`, `-srv`), switches off IPv6 DAD in each (so addresses work at once),
then creates one veth pair client<->gateway ("inside") and one gateway<->server ("outside")
with pyroute2, assigns the addresses from `LabAddresses`, adds default routes and turns the
gateway into a router (forwarding on, rp_filter off). Every subprocess is started through
`ip netns exec NAME ...` (which execs the command, so the PID we record is the program's own,
and each one leads its own process group). `close()` kills the tracked process groups
(SIGTERM, then SIGKILL), kills anything else still running inside *our* namespaces, and removes
exactly the namespaces this lab created. A failure half-way through `start()` tears down
whatever was built. Nothing is configured outside the lab's namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from pyroute2 import IPRoute, netns

from ftpalg.lab.addresses import IPAddress as IPAddress
from ftpalg.lab.addresses import LabAddresses as LabAddresses
from ftpalg.lab.addresses import LabInterfaces as LabInterfaces
from ftpalg.lab.procs import missing_tools as missing_tools
from ftpalg.lab.procs import stop_process as stop_process
from ftpalg.lab.procs import wait_until as wait_until

Role = Literal["cli", "gw", "srv"]
ROLES: tuple[Role, ...] = ("cli", "gw", "srv")
REQUIRED_TOOLS = ("ip", "nft", "sysctl")
_IFA_F_NODAD = 0x02


class LabError(RuntimeError):
    """Building or using the lab failed."""


class LabUnavailable(LabError):
    """The lab cannot be built on this machine (not root, a tool is missing)."""


def lab_required() -> bool:
    """True when the environment demands the lab (FTPALG_LAB_REQUIRED=1): skip becomes fail."""
    return os.environ.get("FTPALG_LAB_REQUIRED", "") == "1"


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, nftables)"
    missing = missing_tools(*REQUIRED_TOOLS)
    if missing:
        return "the network lab needs these tools: " + ", ".join(missing)
    return None


class Lab:
    """client — gateway — server namespaces; use as a context manager or start()/close()."""

    def __init__(self, prefix: str = "fa", subnet: int | None = None) -> None:
        if len(prefix) > 4 or not prefix.isalnum():
            raise ValueError("prefix must be 1-4 alphanumeric characters")
        self.id = prefix + secrets.token_hex(3)
        self.namespaces: dict[Role, str] = {r: f"{self.id}-{r}" for r in ROLES}
        self.ifnames = LabInterfaces(
            client=f"{self.id}-c0",
            gw_inside=f"{self.id}-in",
            gw_outside=f"{self.id}-out",
            server=f"{self.id}-s0",
        )
        n = subnet if subnet is not None else 100 + secrets.randbelow(151)
        self.addresses = LabAddresses.for_subnet(n)
        # where FTP servers and clients run; a reverse-proxy lab swaps them (the server on the
        # private inside network, clients outside)
        self.server_role: Role = "srv"
        self.client_role: Role = "cli"
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._cleanups: list[Callable[[], None]] = []
        self._next_port = 40000
        self._started = False
        self._closed = False

    # ---- life cycle -------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> Lab:
        if self._started:
            raise LabError("lab already started")
        reason = lab_unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        self._started = True
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        for role in ROLES:
            name = self.namespaces[role]
            netns.create(name)  # O_EXCL: fails instead of reusing a foreign namespace
            self._created.append(name)
        base = {
            "net.ipv6.conf.all.accept_dad": "0",
            "net.ipv6.conf.default.accept_dad": "0",
            "net.ipv6.conf.all.accept_ra": "0",
            "net.ipv6.conf.default.accept_ra": "0",
        }
        for role in ("cli", "srv"):
            self.sysctls(role, base)
        router = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
        router |= {f"net.ipv4.conf.{n}.rp_filter": "0" for n in ("all", "default")}
        self.sysctls("gw", base | router)
        a, i = self.addresses, self.ifnames
        self._veth("gw", i.gw_inside, "cli", i.client)
        self._veth("gw", i.gw_outside, "srv", i.server)
        self._configure(
            "cli",
            i.client,
            [(a.client_v4, 24), (a.client_v6, 64)],
            [a.gw_inside_v4, a.gw_inside_v6],
        )
        self._configure("gw", i.gw_inside, [(a.gw_inside_v4, 24), (a.gw_inside_v6, 64)], [])
        self._configure("gw", i.gw_outside, [(a.gw_outside_v4, 24), (a.gw_outside_v6, 64)], [])
        srv: list[tuple[IPAddress, int]] = [(x, 24) for x in a.servers_v4]
        srv += [(x, 64) for x in a.servers_v6]
        self._configure("srv", i.server, srv, [a.gw_outside_v4, a.gw_outside_v6])
        self.sysctls(
            "gw", {f"net.ipv4.conf.{n}.rp_filter": "0" for n in (i.gw_inside, i.gw_outside)}
        )
        links: list[tuple[Role, str]] = [
            ("cli", i.client),
            ("gw", i.gw_inside),
            ("gw", i.gw_outside),
            ("srv", i.server),
        ]
        if not wait_until(lambda: all(self._oper_up(r, n) for r, n in links), timeout=10):
            raise LabError("veth links did not come up within 10 s")

    def _oper_up(self, role: Role, ifname: str) -> bool:
        with IPRoute(netns=self.namespaces[role]) as ipr:
            link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
            return bool(link.get("IFLA_OPERSTATE") == "UP")

    def _veth(self, role: Role, ifname: str, peer_role: Role, peer_ifname: str) -> None:
        with IPRoute(netns=self.namespaces[role]) as ipr:
            peer = {"ifname": peer_ifname, "net_ns_fd": self.namespaces[peer_role]}
            ipr.link("add", ifname=ifname, kind="veth", peer=peer)

    def _configure(
        self, role: Role, ifname: str, addrs: list[tuple[IPAddress, int]], gws: list[IPAddress]
    ) -> None:
        with IPRoute(netns=self.namespaces[role]) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            idx = ipr.link_lookup(ifname=ifname)[0]
            for addr, plen in addrs:
                flags = _IFA_F_NODAD if addr.version == 6 else 0
                ipr.addr("add", index=idx, address=str(addr), prefixlen=plen, flags=flags)
            ipr.link("set", index=idx, state="up")
            for gw in gws:
                family = socket.AF_INET6 if gw.version == 6 else socket.AF_INET
                dst = "::/0" if gw.version == 6 else "0.0.0.0/0"
                ipr.route("add", dst=dst, gateway=str(gw), family=family)

    def close(self) -> None:
        """Kill tracked processes, then remove the namespaces this lab created. Idempotent."""
        if self._closed:
            return
        self._closed = True
        while self._cleanups:
            fn = self._cleanups.pop()
            with contextlib.suppress(Exception):
                fn()
        for proc in reversed(self._procs):
            stop_process(proc)
        for name in self._created:
            self._kill_leftovers(name)
        errors = []
        for name in reversed(self._created):
            try:
                netns.remove(name)
            except OSError as exc:
                errors.append(f"{name}: {exc}")
        self._created.clear()
        if errors:
            raise LabError("could not remove namespaces: " + "; ".join(errors))

    @staticmethod
    def _kill_leftovers(name: str) -> None:
        # Only processes inside a namespace this lab created (children of what we started).
        out = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10
        )
        for pid in (int(p) for p in out.stdout.split() if p.isdigit()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run fn (last registered first) when the lab closes, before processes are killed."""
        self._cleanups.append(fn)

    def next_port_range(self, count: int = 100) -> tuple[int, int]:
        """A fresh (lo, hi) port range, distinct within this lab (e.g. for passive ports)."""
        lo = self._next_port
        self._next_port += count
        if self._next_port > 60000:
            raise LabError("lab port ranges exhausted")
        return lo, lo + count - 1

    @property
    def closed(self) -> bool:
        return self._closed

    def ns(self, role: Role) -> str:
        """The namespace name for a role."""
        return self.namespaces[role]

    # ---- running things ---------------------------------------------------------------
    def _argv(self, role: Role, argv: list[str]) -> list[str]:
        if not self._started or self._closed:
            raise LabError("lab is not running")
        return ["ip", "netns", "exec", self.namespaces[role], *argv]

    def run(
        self,
        role: Role,
        argv: list[str],
        timeout: float = 30.0,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in a namespace, capture text output; check=True raises LabError on rc!=0."""
        try:
            cp = subprocess.run(
                self._argv(role, argv),
                input=input,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"timed out after {timeout}s in {role}: {argv}") from exc
        if check and cp.returncode != 0:
            raise LabError(f"{argv} in {role} failed ({cp.returncode}): {cp.stderr.strip()}")
        return cp

    def popen(self, role: Role, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start argv in a namespace (own process group); killed by close() if still running."""
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(role, argv), **kw)
        self._procs.append(proc)
        return proc

    def nft(self, role: Role, ruleset_text: str) -> None:
        """Apply an nftables ruleset with `nft -f -`; raises LabError with nft's message."""
        cp = self.run(role, ["nft", "-f", "-"], timeout=20, input=ruleset_text)
        if cp.returncode != 0:
            raise LabError(f"nft -f failed in {role}: {cp.stderr.strip()}\n{ruleset_text}")

    def sysctl(self, role: Role, key: str, value: str | int) -> None:
        self.sysctls(role, {key: str(value)})

    def sysctls(self, role: Role, values: dict[str, str]) -> None:
        argv = ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]
        self.run(role, argv, timeout=10, check=True)

    def socket(
        self, role: Role, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket created inside a namespace (usable from this process)."""
        if not self._started or self._closed:
            raise LabError("lab is not running")
        sock: socket.socket = netns.create_socket(self.namespaces[role], family, type, flags=0)
        return sock

    def can_connect(self, role: Role, address: IPAddress, port: int, timeout: float = 1.0) -> bool:
        """True when a TCP connect from `role` to address:port succeeds."""
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        with self.socket(role, family) as s:
            s.settimeout(timeout)
            return s.connect_ex((str(address), port)) == 0
