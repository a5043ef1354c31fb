"""Operations around the relay: the event tap, metrics, xferlog, SIGHUP, dropping root.

How this works. `Operations` follows the daemon's phases:

- `prepare()` (as root, after the control listeners are bound): bind the metrics socket and
  open the xferlog, so both may use privileged ports and root-owned paths;
- `drop_privileges()` (after the kernel set-up, before the event loop exists): ``--user``;
- `start(gateway)` (in the loop): wrap ``gateway.log`` in a `TappedLogger`, start the
  metrics endpoint, install the SIGHUP handler;
- `close()` at the end.

The tap is the single point where ftpalg's events become numbers and xferlog lines: every
log call of the gateway and its sessions (the core's `Log` actions in
``ControlSession.dispatch``, the gateway's and acceptor's own lines) goes through a logger
bound from ``gateway.log``, so wrapping that one object sees them all — with the bound
context (session, client) merged into the fields and before any level filtering. Sinks run
before the log line is written; a failing sink is logged once and never breaks a session.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ftpalg.ops.config import Config, ConfigError
from ftpalg.ops.logs import configure, get_logger
from ftpalg.ops.metrics import Metrics, MetricsServer
from ftpalg.ops.privileges import drop_privileges
from ftpalg.ops.reload import plan_reload
from ftpalg.ops.xferlog import XferLog

Sink = Callable[[str, dict[str, Any]], None]
_PRELOAD = ("encodings.idna", "concurrent.futures.thread")


class TappedLogger:
    """A structlog bound logger that also hands every event to `sinks`."""

    def __init__(self, inner: Any, sinks: list[Sink], context: dict[str, Any] | None = None,
                 broken: set[int] | None = None) -> None:  # fmt: skip
        self._inner = inner
        self._sinks = sinks
        self._context = context or {}
        self._broken = set() if broken is None else broken  # shared by all bound loggers

    def bind(self, **values: Any) -> TappedLogger:
        inner = self._inner.bind(**values)
        return TappedLogger(inner, self._sinks, self._context | values, self._broken)

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        merged = self._context | fields
        for sink in self._sinks:
            try:
                sink(event, merged)
            except Exception as exc:  # a metrics bug must not break a session
                if id(sink) not in self._broken:
                    self._broken.add(id(sink))
                    self._inner.error("observer_failed", failed_event=event,
                                      error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        getattr(self._inner, level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def bind_metrics(config: Config) -> socket.socket | None:
    if config.metrics is None:
        return None
    ep = config.metrics
    family = socket.AF_INET6 if ep.host.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(ep.host), ep.port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot serve metrics on {ep}: {exc.strerror or exc}") from None
    return sock


class Operations:
    def __init__(self, config: Config, argv: Sequence[str]) -> None:
        self.config = config
        self.argv = list(argv)
        self.log: Any = get_logger()
        self.metrics = Metrics("reverse" if config.upstream else "transparent")
        self.xferlog = XferLog(config.xferlog, self._report)
        self.sinks: list[Sink] = [self.metrics.observe, self.xferlog.observe]
        self._metrics_sock: socket.socket | None = None
        self._server: MetricsServer | None = None
        self.gateway: Any = None

    def prepare(self) -> None:
        """As root: bind the metrics socket, open the xferlog. Raises OSError (one line)."""
        self._metrics_sock = bind_metrics(self.config)
        try:
            self.xferlog.open()
        except OSError as exc:
            self.close()
            why = exc.strerror or exc
            raise OSError(exc.errno, f"xferlog {self.config.xferlog}: {why}") from None

    def drop_privileges(self) -> None:
        """``--user``: raises PrivilegeError (one line). Modules that would otherwise be
        imported lazily are imported first: the installation may not be readable by the
        user (a virtualenv under /root)."""
        if self.config.user is not None:
            for name in _PRELOAD:
                importlib.import_module(name)
            drop_privileges(self.config.user)
            self.log.info("privileges_dropped", user=self.config.user,
                          capabilities=["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"])  # fmt: skip

    async def start(self, gateway: Any) -> None:
        """Before ``gateway.start()``: tap its logger, serve metrics, handle SIGHUP."""
        self.gateway = gateway
        self.log = gateway.log = TappedLogger(gateway.log, self.sinks)
        if self._metrics_sock is not None:
            self._server = MetricsServer(self.metrics, self._metrics_sock)
            await self._server.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; apply what may change; reopen the xferlog."""
        try:
            plan = plan_reload(self.config, self.argv)
        except ConfigError as exc:
            self.log.error("reload_failed", error=str(exc))
            self.xferlog.reopen(self.config.xferlog)
            return
        old, new = self.config, plan.config
        if (new.log_format, new.log_level) != (old.log_format, old.log_level):
            configure(new.log_format, new.log_level)
        self.config = new
        if self.gateway is not None:
            self.gateway.reconfigure(new)
        self.xferlog.reopen(new.xferlog)
        self.log.info("reloaded", changed=list(plan.changed),
                      needs_restart=list(plan.needs_restart))  # fmt: skip

    def _report(self, event: str, error: str) -> None:
        self.log.error(event, error=error)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        elif self._metrics_sock is not None:
            self._metrics_sock.close()
        self.xferlog.close()
