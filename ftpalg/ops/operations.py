"""Operations around the gateway: the observer, metrics, xferlog, SIGHUP, dropping root.

How this works. `Operations` follows the daemon's phases:

- construction: one `Observer` whose sinks are the metrics and the xferlog; the gateway is
  made with it, so every observation of the gateway and its sessions reaches both (typed,
  before the log line is written, whatever the log level);
- `prepare()` (as root, after the control listeners are bound): bind the metrics socket and
  open the xferlog, so both may use privileged ports and root-owned paths;
- `drop_privileges()` (after the kernel set-up, before the event loop exists): ``--user``;
- `start(gateway)` (in the loop): start the metrics endpoint, install the SIGHUP handler;
- `close()` at the end.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pwd
import signal
import socket
from collections.abc import Sequence
from typing import Any

from ftpalg.ops.config import Config, ConfigError
from ftpalg.ops.events import Failed, Reloaded
from ftpalg.ops.logs import configure, get_logger
from ftpalg.ops.metrics import Metrics, MetricsServer
from ftpalg.ops.observer import Observer
from ftpalg.ops.privileges import PrivilegeError, drop_privileges
from ftpalg.ops.reload import plan_reload
from ftpalg.ops.xferlog import XferLog

_PRELOAD = ("encodings.idna", "concurrent.futures.thread")


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
        self.metrics = Metrics("reverse" if config.upstream else "transparent")
        self.xferlog = XferLog(config.xferlog, self._report)
        self.observe = Observer(get_logger(), [self.metrics.observe, self.xferlog.observe])
        self.log = self.observe.log
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
            self._hand_over_xferlog(self.config.user)
            drop_privileges(self.config.user)
            self.log.info(
                "privileges_dropped",
                user=self.config.user,
                capabilities=["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"],
            )

    def _hand_over_xferlog(self, user: str) -> None:
        """The xferlog (opened as root) becomes the user's, so that SIGHUP can reopen it
        after privileges are gone. Rotation that creates a new file also needs a directory
        the user may write (systemd's LogsDirectory= gives exactly that)."""
        path = self.config.xferlog
        if path is None:
            return
        entry = pwd.getpwnam(user)
        try:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        except OSError as exc:
            raise PrivilegeError(
                f"xferlog {path}: cannot hand it to {user}: {exc.strerror}"
            ) from None

    async def start(self, gateway: Any) -> None:
        """Before ``gateway.start()`` (a gateway made with `observe`): serve metrics, handle
        SIGHUP."""
        self.gateway = gateway
        if self._metrics_sock is not None:
            self._server = MetricsServer(self.metrics, self._metrics_sock)
            await self._server.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; apply what may change; reopen the xferlog."""
        try:
            plan = plan_reload(self.config, self.argv)
        except ConfigError as exc:
            self.observe(Reloaded(False, error=str(exc)))
            self.xferlog.reopen(self.config.xferlog)
            return
        old, new = self.config, plan.config
        if (new.log_format, new.log_level) != (old.log_format, old.log_level):
            configure(new.log_format, new.log_level)
        self.config = new
        if self.gateway is not None:
            self.gateway.reconfigure(new)
        self.xferlog.reopen(new.xferlog)
        self.observe(Reloaded(True, tuple(plan.changed), tuple(plan.needs_restart)))

    def _report(self, failed: Failed) -> None:
        self.observe(failed)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        elif self._metrics_sock is not None:
            self._metrics_sock.close()
        self.xferlog.close()
