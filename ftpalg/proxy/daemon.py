"""`ftpalg` as a daemon: bind listeners, set up the kernel, run the loop, clean up.

Order matters: listeners are bound first (a port in use is a one-line error before anything
changes in the kernel); TPROXY routing and the nftables table are installed before the event
loop starts (pyroute2 cannot run under uvloop) and removed after it ends, also on SIGTERM /
SIGINT, which drain running transfers for the grace period first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from ftpalg.kernel import KernelSetup, KernelSetupError, NftPlan, PinholeTable, TproxyKernel
from ftpalg.kernel.claim import claim_table
from ftpalg.kernel.conntrack_netns import ensure_conntrack_sysctls
from ftpalg.kernel.nft import TABLE, forward_blocked
from ftpalg.ops import sdnotify
from ftpalg.ops.config import Config
from ftpalg.ops.logs import configure, get_logger
from ftpalg.ops.operations import Operations
from ftpalg.ops.privileges import PrivilegeError
from ftpalg.proxy.gateway import Gateway
from ftpalg.proxy.kernel_plane import KernelData
from ftpalg.proxy.sockets import make_listener


def bind_listeners(config: Config) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for ep in config.listen:
            sock = make_listener(ep.host, ep.port, transparent=config.transparent, backlog=1024)
            sock.setblocking(False)
            sockets.append(sock)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(exc.errno, f"cannot listen on {ep}: {exc.strerror or exc}") from None
    return sockets


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


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, the stdlib loop a fallback
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve(
    config: Config,
    listeners: list[socket.socket],
    ops: Operations | None = None,
    kernel_data: KernelData | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    gateway = Gateway(config, loop, ops.observe if ops is not None else None, kernel_data)
    if kernel_data is not None:
        kernel_data.start(loop)
    if ops is not None:  # metrics, xferlog, SIGHUP (ftpalg/ops/operations.py)
        await ops.start(gateway)
    await gateway.start(listeners)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gateway.log.info(
        "started",
        listen=[str(e) for e in config.listen],
        mode="reverse" if config.upstream else "transparent",
        upstream=str(config.upstream) if config.upstream else None,
        policy="loose" if config.loose else "strict",
        data_plane="kernel" if kernel_data else "relay",
    )
    sdnotify.ready()  # systemd Type=notify: serving from now on
    await stop.wait()
    gateway.log.info("stopping", sessions=len(gateway.sessions))
    sdnotify.stopping(gateway.config.grace_period)  # the drain may outlast TimeoutStopSec
    await gateway.shutdown(gateway.config.grace_period)  # as reloaded


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
) -> tuple[KernelSetup | None, KernelData | None, socket.socket | None]:
    """What ftpalg installs, the kernel data plane when it carries, and the table's lock.
    A KernelSetupError means ftpalg cannot run (transparent mode needs its table; `kernel`
    was forced); in reverse mode under `auto` a failed set-up (no CAP_NET_ADMIN, say) only
    means the relay carries, with a warning."""
    plane, lock = claim_kernel(config, log)
    kernel = kernel_for(config, listeners, pinholes=plane == "kernel")
    try:
        if kernel is not None:
            kernel.setup()
        if plane != "kernel":
            return kernel, None, lock
        ensure_conntrack_sysctls()  # accounting and events for the tagged connections
        return kernel, KernelData(ops.observe), lock
    except (KernelSetupError, OSError) as exc:
        if kernel is not None:
            with contextlib.suppress(KernelSetupError, OSError):
                kernel.teardown()
        if lock is not None:
            lock.close()
        if config.transparent or config.data_plane == "kernel":
            raise KernelSetupError(f"kernel setup failed: {exc}") from None
        log.warning("data_plane_relay", reason=f"kernel setup failed: {exc}")
        return None, None, None


def _give_up(message: str, listeners: list[socket.socket], ops: Operations | None = None) -> int:
    """Before the loop runs: release what was set up so far, one line, exit status 1."""
    for sock in listeners:
        sock.close()
    if ops is not None:
        ops.close()
    print(f"ftpalg: {message}", file=sys.stderr)
    return 1


def run_daemon(config: Config, argv: Sequence[str] = ()) -> int:
    configure(config.log_format, config.log_level)
    log = get_logger()
    try:
        listeners = bind_listeners(config)
    except OSError as exc:
        print(f"ftpalg: {exc.strerror or exc}", file=sys.stderr)
        return 1
    ops = Operations(config, argv)  # argv: what SIGHUP re-reads
    try:
        ops.prepare()
    except OSError as exc:
        return _give_up(str(exc.strerror or exc), listeners)
    try:
        kernel, kernel_data, lock = set_up_kernel(config, listeners, ops, log)
    except KernelSetupError as exc:
        return _give_up(str(exc), listeners, ops)
    try:
        factory = loop_factory()  # imports uvloop while its files are surely readable
        ops.drop_privileges()  # --user: after the root-only set-up, before the loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, listeners, ops, kernel_data))
    except PrivilegeError as exc:
        print(f"ftpalg: {exc}", file=sys.stderr)
        return 1
    finally:
        if kernel_data is not None:
            kernel_data.close()
        ops.close()
        if kernel is not None:
            try:
                kernel.teardown()
            except (KernelSetupError, OSError) as exc:
                log.error("kernel_teardown_failed", error=str(exc))
        if lock is not None:
            lock.close()  # only now may another instance take the table
    return 0
