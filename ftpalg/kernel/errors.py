"""The one exception the kernel adapter raises.

How this works: every failure to change kernel state (nft refusing a script, netlink refusing
a rule, a missing binary or capability) is converted into :class:`KernelSetupError` at the
adapter boundary, with a message an operator can act on (it includes nft's stderr or the
netlink error text). The CLI prints it as one line; nothing above this package needs to know
about ``NetlinkError`` or ``CalledProcessError``.
"""

from __future__ import annotations


class KernelSetupError(RuntimeError):
    """A kernel change (nftables, policy routing) could not be made or undone."""
