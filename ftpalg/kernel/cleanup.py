"""`ftpalg cleanup`: remove what an ftpalg that could not exit cleanly (SIGKILL, a crash, a
power cut of the process) left in the kernel — its nftables table, and its policy-routing
rules and routes (marked `proto 121`, whatever mark and table they use).

It refuses while an ftpalg instance runs in this network namespace (it holds the table's
lock, claim.py): that state is in use, and stopping the instance removes it anyway.
"""

from __future__ import annotations

from ftpalg.kernel import nft, routing
from ftpalg.kernel.claim import claim_table
from ftpalg.kernel.errors import KernelSetupError


def cleanup(netns: str | None = None) -> str:
    """Remove the leftovers; one line saying what was removed. KernelSetupError when an
    instance runs or the kernel refuses."""
    try:
        lock = claim_table(nft.TABLE)
    except KernelSetupError as exc:
        raise KernelSetupError(f"{exc}: it is running; stop it instead") from None
    try:
        had_table = nft.list_table(nft.TABLE, netns) is not None
        nft.remove(nft.TABLE, netns)
        rules, routes = routing.remove_all_ours(netns=netns)
    finally:
        lock.close()
    if not (had_table or rules or routes):
        return "nothing of ftpalg's in the kernel"
    parts = [f"table inet {nft.TABLE}"] if had_table else []
    parts += [f"{rules} routing rule(s)"] if rules else []
    parts += [f"{routes} route(s)"] if routes else []
    return "removed " + ", ".join(parts)
