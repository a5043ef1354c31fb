"""What ftpalg sets up in the kernel before its event loop runs, and takes down after it.

How this works: `set_up_kernel` decides the data plane (`choose_plane`: the kernel where it
can carry, docs/data-plane.md), takes the table's lock (kernel/claim.py), installs the TPROXY
routing and table (transparent mode) or only the pinhole table (reverse mode on the kernel
plane), opens the kernel data plane's netlink sockets and the watch on ftpalg's own state
(kernel/watchdog.py) — all as root, before privileges are dropped. `KernelState.start`
joins them to the loop (the kernel data plane's events, the guard that re-installs what
disappears: kernel_guard.py); `close` undoes everything in reverse order, the lock last.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from ftpalg.kernel import KernelSetup, KernelSetupError, NftPlan, PinholeTable, TproxyKernel
from ftpalg.kernel.claim import claim_table
from ftpalg.kernel.conntrack_netns import ensure_conntrack_sysctls
from ftpalg.kernel.nft import TABLE, forward_blocked
from ftpalg.kernel.pinholes import open_ops
from ftpalg.kernel.watchdog import KernelWatch
from ftpalg.ops.config import Config
from ftpalg.ops.observer import Observer
from ftpalg.ops.operations import Operations
from ftpalg.proxy.kernel_guard import KernelGuard
from ftpalg.proxy.kernel_plane import KernelData


@dataclass
class KernelState:
    setup: KernelSetup | None = None
    data: KernelData | None = None  # the kernel data plane, when it carries
    lock: socket.socket | None = None  # the table's lock (claim.py)
    watch: KernelWatch | None = None
    guard: KernelGuard | None = None

    def start(self, loop: asyncio.AbstractEventLoop, observe: Observer) -> None:
        if self.data is not None:
            self.data.start(loop)
        if self.setup is not None and self.watch is not None:
            self.guard = KernelGuard(loop, self.setup, self.watch, observe, self._reopen)
            self.guard.start()

    def _reopen(self) -> int:
        """After a re-install: the pinholes of expectations still open, back in the table."""
        if self.data is None:
            return 0
        pinholes = [entry.pinhole for entry in self.data.pinholes.values()]
        for pinhole in pinholes:
            self.data.elements.apply(open_ops(pinhole))
        return len(pinholes)

    def close(self, log: FilteringBoundLogger | None) -> None:
        """Undo everything; `log` None: quietly (a set-up that failed says so itself)."""
        if self.guard is not None:
            self.guard.close()
        elif self.watch is not None:
            self.watch.close()
        if self.data is not None:
            self.data.close()
        if self.setup is not None:
            try:
                self.setup.teardown()
            except (KernelSetupError, OSError) as exc:
                if log is not None:
                    log.error("kernel_teardown_failed", error=str(exc))
        if self.lock is not None:
            self.lock.close()  # only now may another instance take the table


def choose_plane(config: Config) -> tuple[str, str | None]:
    """("kernel" or "relay", why not the kernel when it was asked for)."""
    if config.data_plane == "relay":
        return "relay", None
    why = kernel_plane_unavailable(config)
    return ("relay", why) if why is not None else ("kernel", None)


def kernel_plane_unavailable(config: Config) -> str | None:
    """Why the kernel cannot carry this configuration's data connections (None: it can). It
    needs ftpalg's own kernel set-up (its table holds the pinholes), forwarding in reverse
    mode (the data connections then pass through the gateway instead of ending in ftpalg),
    and no foreign forward chain that would drop what the pinholes admit."""
    if not config.kernel_setup:
        return "the kernel data plane needs ftpalg's own kernel set-up (kernel_setup is off)"
    if config.announce_address:
        return (
            "announce_address is set: a DNAT in front of ftpalg changes the address the"
            " pinholes are keyed on, so the relay carries the data"
        )
    if config.upstream is not None:
        versions = sorted({ep.host.version for ep in config.listen})  # the clients' side
        off = [name for v in versions if not forwarding(name := FORWARDING[v])]
        if off:
            return (
                f"{', '.join(off)} is off: in reverse mode the kernel data plane forwards"
                " the data connections (the relay does not need it)"
            )
    return forward_blocked()


FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


def forwarding(sysctl: str) -> bool:
    try:
        return Path("/proc/sys", *sysctl.split(".")).read_text().strip() != "0"
    except OSError:
        return False


def kernel_for(
    config: Config, listeners: list[socket.socket], pinholes: bool = False
) -> KernelSetup | None:
    """What ftpalg installs in the kernel: in transparent mode the TPROXY routing and its
    table; in reverse mode only a table with the pinholes, when the kernel plane carries."""
    if not config.kernel_setup or not (config.transparent or pinholes):
        return None
    if not config.transparent:
        return PinholeTable(NftPlan(proxy_port_v4=None, proxy_port_v6=None, pinholes=True))
    ports = {4: None, 6: None} | {
        (6 if s.family == socket.AF_INET6 else 4): s.getsockname()[1] for s in listeners
    }
    plan = NftPlan(
        mark=config.tproxy_mark,
        proxy_port_v4=ports[4],
        proxy_port_v6=ports[6],
        inside_ifaces=config.inside_interfaces,
        pinholes=pinholes,
    )
    return TproxyKernel(plan, route_table=config.route_table)


def claim_kernel(config: Config, log: FilteringBoundLogger) -> tuple[str, socket.socket | None]:
    """The data plane, and the lock on ftpalg's table when this instance will install it
    (`kernel/claim.py`). A table held by another instance is an error in transparent mode and
    with `kernel` forced; in reverse mode with `auto` the relay carries instead."""
    plane, why_not = choose_plane(config)
    lock = None
    if config.kernel_setup and (config.transparent or plane == "kernel"):
        try:
            lock = claim_table(TABLE)
        except KernelSetupError as exc:
            if config.transparent:
                raise
            plane, why_not = "relay", str(exc)
    if why_not is not None and config.data_plane == "kernel":
        if lock is not None:
            lock.close()
        raise KernelSetupError(f"data_plane kernel: {why_not}")
    if why_not is not None:
        log.warning("data_plane_relay", reason=why_not)
    return plane, lock


def set_up_kernel(
    config: Config, listeners: list[socket.socket], ops: Operations, log: FilteringBoundLogger
) -> KernelState:
    """What ftpalg installs, the kernel data plane when it carries, the table's lock and the
    watch on them. A KernelSetupError means ftpalg cannot run (transparent mode needs its
    table; `kernel` was forced); in reverse mode under `auto` a failed set-up (no
    CAP_NET_ADMIN, say) only means the relay carries, with a warning."""
    plane, lock = claim_kernel(config, log)
    state = KernelState(kernel_for(config, listeners, pinholes=plane == "kernel"), lock=lock)
    try:
        if state.setup is not None:
            state.setup.setup()
            route_table = config.route_table if config.transparent else None
            state.watch = KernelWatch(TABLE, route_table)
    except (KernelSetupError, OSError) as exc:
        return _failed(config, state, exc, log)
    if plane == "kernel":
        try:
            ensure_conntrack_sysctls()  # accounting and events for the tagged connections
            state.data = KernelData(ops.observe)
        except (KernelSetupError, OSError) as exc:
            if config.data_plane == "kernel":
                state.close(None)
                raise KernelSetupError(f"kernel setup failed: {exc}") from None
            # auto: the table stays (its pinhole sets unused), the relay carries; e.g. a
            # container whose /proc/sys is read-only (the conntrack sysctls)
            log.warning("data_plane_relay", reason=f"kernel data plane: {exc}")
    return state


def _failed(
    config: Config, state: KernelState, exc: Exception, log: FilteringBoundLogger
) -> KernelState:
    """The table or routing could not be installed: fatal where ftpalg needs them."""
    with contextlib.suppress(KernelSetupError, OSError):
        state.close(None)
    if config.transparent or config.data_plane == "kernel":
        raise KernelSetupError(f"kernel setup failed: {exc}") from None
    log.warning("data_plane_relay", reason=f"kernel setup failed: {exc}")
    return KernelState()
