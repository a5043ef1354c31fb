"""The kernel-state watch (ftpalg/kernel/watchdog.py) against the real kernel in a private
namespace: each way ftpalg's state can disappear is noticed from a notification, and the
churn that is ftpalg's own (pinhole elements, other tables, other routing tables) is not."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ftpalg.kernel import NftPlan, TproxyKernel
from ftpalg.kernel.watchdog import KernelWatch, touches_routing, touches_table

PLAN = NftPlan(proxy_port_v4=2121, proxy_port_v6=2121, pinholes=True)


def settled(watch: KernelWatch, seconds: float = 0.3) -> bool:
    """What the notifications of the last `seconds` say (they arrive within the commit)."""
    deadline, hit = time.monotonic() + seconds, False
    while time.monotonic() < deadline:
        hit = watch.read() or hit
        time.sleep(0.02)
    return hit


def test_garbage_and_foreign_messages_are_not_hits() -> None:
    assert not touches_table(b"", "ftpalg") and not touches_routing(b"", 100)
    assert not touches_table(b"\xff" * 40, "ftpalg")
    assert not touches_routing(b"\x01\x00" * 30, 100)


@pytest.mark.lab
def test_each_disappearance_is_noticed(lab: Any) -> None:
    ns = lab.netns()
    kernel = TproxyKernel(PLAN, route_table=100, netns=ns)
    watch = KernelWatch("ftpalg", 100, netns=ns)
    try:
        kernel.setup()
        settled(watch)  # the install's own delete-then-define of the table
        lab.sh(ns, "nft", "add", "table", "inet", "other")
        lab.sh(ns, "nft", "delete", "table", "inet", "other")
        lab.sh(ns, "ip", "route", "add", "blackhole", "192.0.2.0/24", "table", "200")
        lab.sh(ns, "ip", "route", "del", "blackhole", "192.0.2.0/24", "table", "200")
        element = "{ 192.0.2.1 . 192.0.2.2 . 1000 timeout 10s }"
        lab.sh(ns, "nft", "add", "element", "inet", "ftpalg", "gate4", element)
        lab.sh(ns, "nft", "delete", "element", "inet", "ftpalg", "gate4", element)
        assert not settled(watch), "other tables, other routing tables, elements: not ours"
        cases = [
            ["nft", "flush", "ruleset"],
            ["nft", "flush", "chain", "inet", "ftpalg", "prerouting"],
            ["ip", "rule", "flush"],
            ["ip", "-6", "route", "flush", "table", "100"],
        ]
        for cmd in cases:
            lab.sh(ns, *cmd)
            assert settled(watch), cmd
            kernel.setup()  # what the guard does
            settled(watch)
    finally:
        watch.close()
        kernel.teardown()
