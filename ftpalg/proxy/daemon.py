"""`ftpalg` as a daemon: bind listeners, set up the kernel, run the loop, clean up.

Order matters: listeners are bound first (a port in use is a one-line error before anything
changes in the kernel); TPROXY routing and the nftables table are installed before the event
loop starts (pyroute2 cannot run under uvloop) and removed after it ends, also on SIGTERM /
SIGINT, which drain running transfers for the grace period first.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ftpalg.kernel import KernelSetupError
from ftpalg.ops import sdnotify
from ftpalg.ops.config import Config, ConfigError
from ftpalg.ops.events import Failed, Fault
from ftpalg.ops.logs import configure, get_logger
from ftpalg.ops.operations import Operations
from ftpalg.ops.privileges import PrivilegeError
from ftpalg.proxy import tls_context
from ftpalg.proxy.gateway import Gateway
from ftpalg.proxy.kernel_state import KernelState, set_up_kernel
from ftpalg.proxy.relay_worker import RelayWorker, fork_worker
from ftpalg.proxy.sockets import make_listener


def bind_listeners(config: Config) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for ep in (*config.listen, *config.listen_implicit):  # implicit FTPS: gateway.py
            sock = make_listener(ep.host, ep.port, transparent=config.transparent, backlog=1024)
            sock.setblocking(False)
            sockets.append(sock)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        why = exc.strerror or str(exc)
        if exc.errno == errno.EPERM and config.transparent:
            why += " (transparent mode needs CAP_NET_ADMIN: run as root or grant it)"
        elif exc.errno == errno.EACCES and ep.port < 1024:
            why += f" (port {ep.port} needs CAP_NET_BIND_SERVICE: run as root or grant it)"
        raise OSError(exc.errno, f"cannot listen on {ep}: {why}") from None
    return sockets


def missing_interfaces(names: tuple[str, ...]) -> list[str]:
    """Inside interfaces that do not exist now (nft wildcards like `wg*` are not checked)."""
    return [n for n in names if not n.endswith("*") and not Path("/sys/class/net", n).exists()]


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
    kernel: KernelState | None = None,
    worker: RelayWorker | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    kernel_data = kernel.data if kernel is not None else None
    observe = ops.observe if ops is not None else None
    gateway = Gateway(config, loop, observe, kernel_data, worker)
    if worker is not None:  # big relays run there (relay_worker.py)
        worker.start(loop, lambda why: gateway.observe(Failed(Fault.RELAY_WORKER, why)))
    if kernel is not None:
        kernel.start(loop, gateway.observe)
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
        data_plane=gateway.default_plane(),
    )
    sdnotify.ready()  # systemd Type=notify: serving from now on
    await stop.wait()
    gateway.log.info("stopping", sessions=len(gateway.sessions))
    sdnotify.stopping(gateway.config.grace_period)  # the drain may outlast TimeoutStopSec
    await gateway.shutdown(gateway.config.grace_period)  # as reloaded
    if worker is not None:
        worker.close()


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
    for name in missing_interfaces(config.inside_interfaces):  # it may appear later (wg0)
        log.warning("inside_interface_missing", interface=name)
    try:
        listeners = bind_listeners(config)
    except OSError as exc:
        print(f"ftpalg: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        tls_context.load(config)  # tls terminate: before privileges are dropped
    except ConfigError as exc:
        return _give_up(str(exc), listeners)
    ops = Operations(config, argv)  # argv: what SIGHUP re-reads
    try:
        ops.prepare()
    except OSError as exc:
        return _give_up(str(exc.strerror or exc), listeners)
    try:
        kernel = set_up_kernel(config, listeners, ops, log)
    except KernelSetupError as exc:
        return _give_up(str(exc), listeners, ops)
    worker: RelayWorker | None = None
    try:
        factory = loop_factory()  # imports uvloop while its files are surely readable
        ops.drop_privileges()  # --user: after the root-only set-up, before the loop
        worker = fork_worker(factory)  # as the dropped user, before a loop exists
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, listeners, ops, kernel, worker))
    except PrivilegeError as exc:
        print(f"ftpalg: {exc}", file=sys.stderr)
        return 1
    finally:
        if worker is not None:
            worker.close()
        kernel.close(log)  # transfers still running get their data_finished (xferlog too)
        ops.close()
    return 0
