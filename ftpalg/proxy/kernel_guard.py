"""Keep ftpalg's kernel state installed while it runs (fail-closed, not silently open).

How this works: `KernelWatch` (kernel/watchdog.py) reports, from netlink notifications, that
something of ftpalg's table or policy routing was deleted — typically `nft flush ruleset` by
a reload of nftables.service. The guard then logs `kernel_state_missing` (warning), installs
the whole state again (`KernelSetup.setup()` is idempotent; it runs on a worker thread, as
pyroute2 and `nft` are synchronous), puts back the pinholes of expectations still open (their
elements went with the table), and logs `kernel_state_restored`. A set-up that fails is
retried every `RETRY_S` seconds with an error line each time. The notifications of its own
re-install are drained afterwards, so the guard does not react to itself.

Between the deletion and the re-install (milliseconds) new FTP control connections are not
diverted; with the relay they pass through the gateway unproxied only if the operator's
forward chain lets them, which the documented fail-closed set-up does not
(docs/deployment.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ftpalg.kernel import KernelSetup, KernelSetupError
from ftpalg.kernel.watchdog import KernelWatch
from ftpalg.ops.events import KernelState
from ftpalg.ops.observer import Observer

RETRY_S = 5.0


class KernelGuard:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        kernel: KernelSetup,
        watch: KernelWatch,
        observe: Observer,
        reopen: Callable[[], int] | None = None,
    ) -> None:
        self.loop, self.kernel, self.watch, self.observe = loop, kernel, watch, observe
        self.reopen = reopen  # puts back open pinholes, returns how many
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for fd in self.watch.filenos():
            self.loop.add_reader(fd, self._on_notice)
        self.observe(KernelState(present=True))

    def close(self) -> None:
        for fd in self.watch.filenos():
            self.loop.remove_reader(fd)
        if self._task is not None:
            self._task.cancel()
        self.watch.close()

    def _on_notice(self) -> None:
        try:
            hit = self.watch.read()
        except OSError as exc:
            self.observe.log.error("kernel_watch_failed", error=str(exc))
            return
        if hit and self._task is None:
            self.observe(KernelState(present=False))
            self._task = self.loop.create_task(self._restore())

    async def _restore(self) -> None:
        try:
            while True:
                try:
                    await asyncio.to_thread(self.kernel.setup)
                    break
                except (KernelSetupError, OSError) as exc:
                    self.observe.log.error("kernel_restore_failed", error=str(exc), retry_s=RETRY_S)
                    await asyncio.sleep(RETRY_S)
            self.watch.read()  # the notifications of our own install
            pinholes = self.reopen() if self.reopen is not None else 0
            self.observe(KernelState(present=True, restored=True, pinholes=pinholes))
        finally:
            self._task = None
