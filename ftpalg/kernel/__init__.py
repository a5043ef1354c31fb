"""The kernel adapter: everything ftpalg changes in the kernel, behind two verbs.

How this works: :class:`KernelSetup` is ``setup()`` + ``teardown()``. In transparent mode,
:class:`TproxyKernel` installs the TPROXY policy routing (``routing.py``, pyroute2) and then
ftpalg's nftables table (``nft.py``, ``nft -f -``); in reverse mode with the kernel data
plane, :class:`PinholeTable` installs only the table (pinholes, no diversion).

Subtle rules:

- ``teardown`` is idempotent and safe after a partial or failed ``setup`` (each step it undoes
  is itself idempotent), and it attempts every step even when one fails, raising the first
  error afterwards. ``setup`` undoes its own partial work before raising.
- Order: routing first, nft second; nft removed first, routing second. The tproxy rules are
  the only thing that diverts traffic, so no packet is marked for a route that does not exist.
- Both verbs are synchronous (pyroute2's sync ``IPRoute`` refuses to run inside a running
  asyncio loop and does not work under uvloop): call them before the loop starts or via
  ``asyncio.to_thread``.
- Sysctls: none are changed. TPROXY itself needs none; forwarding (``ip_forward``) is the
  gateway operator's business, not ftpalg's.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from ftpalg.kernel import nft, routing
from ftpalg.kernel.errors import KernelSetupError
from ftpalg.kernel.nft import NftPlan

__all__ = ["KernelSetup", "KernelSetupError", "NftPlan", "PinholeTable", "TproxyKernel"]


class KernelSetup(Protocol):
    """What the proxy needs from the kernel: set it up, take it down (idempotently)."""

    def setup(self) -> None: ...

    def teardown(self) -> None: ...


class TproxyKernel:
    """Policy routing (``fwmark → table``, ``local default dev lo``) + ftpalg's nft table."""

    def __init__(self, plan: NftPlan, route_table: int = 100, netns: str | None = None) -> None:
        self.plan = plan
        self.route_table = route_table
        self.netns = netns

    def setup(self) -> None:
        try:
            routing.install(self.plan.mark, self.route_table, self.plan.families, netns=self.netns)
            nft.apply(nft.render(self.plan), netns=self.netns)
        except BaseException:
            with contextlib.suppress(KernelSetupError):  # the original error matters more
                self.teardown()
            raise

    def teardown(self) -> None:
        first: KernelSetupError | None = None
        try:
            nft.remove(self.plan.table, netns=self.netns)
        except KernelSetupError as exc:
            first = exc
        try:
            routing.remove(self.plan.mark, self.route_table, self.plan.families, netns=self.netns)
        except KernelSetupError as exc:
            first = first or exc
        if first is not None:
            raise first


class PinholeTable:
    """Only ftpalg's table (reverse mode: nothing to divert, the kernel data plane's sets)."""

    def __init__(self, plan: NftPlan, netns: str | None = None) -> None:
        self.plan = plan
        self.netns = netns

    def setup(self) -> None:
        nft.apply(nft.render(self.plan), netns=self.netns)

    def teardown(self) -> None:
        nft.remove(self.plan.table, netns=self.netns)
