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
    assert rule4.count("fwmark 0x1 lookup 100") == 1
    assert rule6.count("fwmark 0x1 lookup 100") == 1
    assert route4.strip().startswith("local default dev lo") and "scope host" in route4
    assert route6.strip().startswith("local default dev lo")
    routing.remove(netns=ns)
    assert _state(lab, ns, 100) == clean
    routing.remove(netns=ns)
    assert _state(lab, ns, 100) == clean


@pytest.mark.lab
def test_remove_leaves_other_routes_and_rules(lab: Any) -> None:
    ns = lab.netns()
    lab.sh(ns, "ip", "rule", "add", "fwmark", "0x2", "lookup", "100")
    lab.sh(ns, "ip", "route", "add", "blackhole", "192.0.2.0/24", "table", "100")
    routing.install(mark=1, table=100, families=(4,), netns=ns)
    routing.remove(mark=1, table=100, families=(4,), netns=ns)
    assert "fwmark 0x2 lookup 100" in lab.sh(ns, "ip", "rule")
    assert "fwmark 0x1 " not in lab.sh(ns, "ip", "rule")
    assert lab.sh(ns, "ip", "route", "show", "table", "100").strip() == "blackhole 192.0.2.0/24"


@pytest.mark.lab
def test_large_table_and_mark(lab: Any) -> None:
    ns = lab.netns()
    routing.install(mark=0x10000, table=1000, families=(4, 6), netns=ns)
    routing.install(mark=0x10000, table=1000, families=(4, 6), netns=ns)
    assert lab.sh(ns, "ip", "rule").count("fwmark 0x10000 lookup 1000") == 1
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
