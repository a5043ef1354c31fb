"""TPROXY policy routing in a private namespace: install twice, remove twice (lab)."""

from __future__ import annotations

from typing import Any

import pytest

from ftpalg.kernel import KernelSetupError, routing


def test_argument_validation() -> None:
    for kwargs in ({"mark": 0}, {"table": 254}, {"table": 0}, {"families": (5,)}):
        with pytest.raises(ValueError):
            routing.install(**kwargs)


def _state(lab: Any, ns: str, table: int) -> tuple[str, str, str, str]:
    return (
        lab.sh(ns, "ip", "-4", "rule"),
        lab.sh(ns, "ip", "-6", "rule"),
        lab.sh(ns, "ip", "-4", "route", "show", "table", str(table), check=False),
        lab.sh(ns, "ip", "-6", "route", "show", "table", str(table), check=False),
    )


@pytest.mark.lab
def test_install_remove_idempotent(lab: Any) -> None:
    ns = lab.netns()
    clean = _state(lab, ns, 100)
    routing.install(netns=ns)
    once = _state(lab, ns, 100)
    routing.install(netns=ns)
    assert _state(lab, ns, 100) == once
    rule4, rule6, route4, route6 = once
    assert rule4.count("fwmark 0x1/0x1 lookup 100 proto 121") == 1
    assert rule6.count("fwmark 0x1/0x1 lookup 100 proto 121") == 1
    assert route4.strip().startswith("local default dev lo proto 121") and "scope host" in route4
    assert route6.strip().startswith("local default dev lo proto 121")
    routing.remove(netns=ns)
    assert _state(lab, ns, 100) == clean
    routing.remove(netns=ns)
    assert _state(lab, ns, 100) == clean


@pytest.mark.lab
def test_remove_leaves_other_routes_and_rules(lab: Any) -> None:
    ns = lab.netns()
    lab.sh(ns, "ip", "rule", "add", "fwmark", "0x2", "lookup", "200")
    lab.sh(ns, "ip", "route", "add", "blackhole", "192.0.2.0/24", "table", "200")
    routing.install(mark=1, table=100, families=(4,), netns=ns)
    routing.remove(mark=1, table=100, families=(4,), netns=ns)
    assert "fwmark 0x2 lookup 200" in lab.sh(ns, "ip", "rule")
    assert "fwmark 0x1" not in lab.sh(ns, "ip", "rule")
    assert lab.sh(ns, "ip", "route", "show", "table", "200").strip() == "blackhole 192.0.2.0/24"


@pytest.mark.lab
@pytest.mark.parametrize(
    ("foreign", "option"),
    [
        (["rule", "add", "fwmark", "0x1", "lookup", "100"], "--tproxy-mark"),  # the recipe
        (["rule", "add", "fwmark", "0x3/0x3", "lookup", "300"], "--tproxy-mark"),  # a shared bit
        (["rule", "add", "fwmark", "0x2", "lookup", "100"], "--route-table"),
        (["route", "add", "blackhole", "192.0.2.0/24", "table", "100"], "--route-table"),
    ],
    ids=["same-rule", "mark-bit", "table-rule", "table-route"],
)
def test_another_tools_mark_or_table_is_refused(lab: Any, foreign: list[str], option: str) -> None:
    """The standard TPROXY recipe (mark 1, table 100) used by another tool: one line naming
    the option to change; nothing of ftpalg's is added, and the other tool's items stay."""
    ns = lab.netns()
    lab.sh(ns, "ip", "-4", *foreign)
    before = _state(lab, ns, 100)
    with pytest.raises(KernelSetupError, match=option):
        routing.install(mark=1, table=100, families=(4, 6), netns=ns)
    assert _state(lab, ns, 100) == before
    routing.remove(mark=1, table=100, families=(4, 6), netns=ns)  # e.g. at exit
    assert _state(lab, ns, 100) == before


@pytest.mark.lab
def test_a_killed_instances_items_are_taken_over(lab: Any) -> None:
    """Left behind by an ftpalg that was killed (proto 121): kept by the next install,
    removed by its remove."""
    ns = lab.netns()
    clean = _state(lab, ns, 100)
    routing.install(netns=ns)
    left = _state(lab, ns, 100)
    routing.install(netns=ns)
    assert _state(lab, ns, 100) == left
    routing.remove(netns=ns)
    assert _state(lab, ns, 100) == clean


@pytest.mark.lab
def test_large_table_and_mark(lab: Any) -> None:
    ns = lab.netns()
    routing.install(mark=0x10000, table=1000, families=(4, 6), netns=ns)
    routing.install(mark=0x10000, table=1000, families=(4, 6), netns=ns)
    assert lab.sh(ns, "ip", "rule").count("fwmark 0x10000/0x10000 lookup 1000") == 1
    assert lab.sh(ns, "ip", "-6", "route", "show", "table", "1000").count("local default") == 1
    routing.remove(mark=0x10000, table=1000, netns=ns)
    assert "1000" not in lab.sh(ns, "ip", "rule")
    assert lab.sh(ns, "ip", "-6", "route", "show", "table", "1000", check=False) == ""


@pytest.mark.lab
def test_errors_are_kernel_setup_errors(lab: Any) -> None:
    ns = lab.netns()
    lab.sh(ns, "ip", "link", "set", "lo", "down")
    with pytest.raises(KernelSetupError, match=r"ip -6 route add .*is 'lo' up"):
        routing.install(netns=ns)
    routing.remove(netns=ns)
    assert "lookup 100" not in lab.sh(ns, "ip", "rule")
    # A missing namespace is an error, never silently created (pyroute2 would create it).
    with pytest.raises(KernelSetupError, match="no such network namespace"):
        routing.install(netns=f"{ns}-missing")
    assert f"{ns}-missing" not in lab.sh(ns, "ip", "netns", "list")
