"""TLS data windows on the kernel data plane (core/tls.py, kernel/pinholes.py `Window`).

How this works: once a control session is TLS, ftpalg cannot see its `227`; the session's
window lets every new connection from its client to the server's address on a port of 1024
or above through (tagged, source-NATed like a pinhole's) until the session ends. The elements
carry a timeout of `lifetime_s` and are re-added at half of it while the session lives, so
an ftpalg that dies leaves no window open for longer than that. A face that is the gateway's
own address (reverse mode) gets no window: such data does not pass through this gateway's
forwarding, and a window there would only tag connections to ftpalg itself.
"""

from __future__ import annotations

import asyncio
import contextlib

from ftpalg.core.messages import OpenWindow
from ftpalg.kernel.errors import KernelSetupError
from ftpalg.kernel.nfnl import SetElements
from ftpalg.kernel.pinholes import Window, window_close_ops, window_ops
from ftpalg.proxy.sockets import is_local_address


class KernelWindows:
    def __init__(
        self, elements: SetElements, loop: asyncio.AbstractEventLoop, window_id: int, life: float
    ) -> None:
        self.elements, self.loop, self.window_id, self.life = elements, loop, window_id, life
        self.windows: list[Window] = []
        self._timer: asyncio.TimerHandle | None = None

    def open(self, action: OpenWindow) -> str | None:
        """None when the window is open, else why not."""
        if is_local_address(action.face):
            return "the server's face is the gateway's own address"
        life_ms = int(self.life * 1000)
        window = Window(self.window_id, action.peer, action.face, action.source, life_ms)
        try:
            self.elements.apply(window_ops(window))
        except KernelSetupError as exc:
            return str(exc)
        self.windows.append(window)
        if self._timer is None:
            self._timer = self.loop.call_later(self.life / 2, self._refresh)
        return None

    def _refresh(self) -> None:
        self._timer = self.loop.call_later(self.life / 2, self._refresh)
        for window in self.windows:  # a failure: it expires, the next refresh tries again
            with contextlib.suppress(KernelSetupError):
                self.elements.apply(window_ops(window))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for window in self.windows:  # a failure: the elements time out by themselves
            with contextlib.suppress(KernelSetupError):
                self.elements.apply(window_close_ops(window))
        self.windows.clear()
