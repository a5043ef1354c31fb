"""nftables: golden renderings (pure) and apply/list/remove in a private namespace (lab)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ftpalg.kernel import KernelSetupError
from ftpalg.kernel.nft import NftPlan, apply, list_table, remove, render

GOLDEN_V4 = """\
add table inet ftpalg
delete table inet ftpalg
table inet ftpalg {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta l4proto tcp socket transparent 1 meta mark set meta mark | 0x1 accept
\t\tmeta nfproto ipv4 tcp dport { 21 } tproxy ip to :2121 meta mark set meta mark | 0x1 accept
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tmeta nfproto ipv4 tcp dport { 21 } ct state new reject with tcp reset
\t}
}
"""

GOLDEN_V4_V6_IFACES = """\
add table inet alg2
delete table inet alg2
table inet alg2 {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tiifname != { "lan0", "wg*" } tcp dport { 21, 2121 } accept
\t\tmeta l4proto tcp socket transparent 1 meta mark set meta mark | 0x20 accept
\t\tiifname { "lan0", "wg*" } meta nfproto ipv4 tcp dport { 21, 2121 } \
tproxy ip to :8021 meta mark set meta mark | 0x20 accept
\t\tiifname { "lan0", "wg*" } meta nfproto ipv6 tcp dport { 21, 2121 } \
tproxy ip6 to :8022 meta mark set meta mark | 0x20 accept
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname { "lan0", "wg*" } meta nfproto ipv4 tcp dport { 21, 2121 } \
ct state new reject with tcp reset
\t\tiifname { "lan0", "wg*" } meta nfproto ipv6 tcp dport { 21, 2121 } \
ct state new reject with tcp reset
\t}
}
"""

GOLDEN_V6_OPEN = """\
add table inet ftpalg
delete table inet ftpalg
table inet ftpalg {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta l4proto tcp socket transparent 1 meta mark set meta mark | 0x1 accept
\t\tmeta nfproto ipv6 tcp dport { 21 } tproxy ip6 to :2121 meta mark set meta mark | 0x1 accept
\t}
}
"""

V4 = NftPlan(proxy_port_v4=2121, proxy_port_v6=None)
V4_V6_IFACES = NftPlan(
    table="alg2",
    mark=0x20,
    proxy_port_v4=8021,
    proxy_port_v6=8022,
    ftp_ports=(2121, 21, 21),
    inside_ifaces=("lan0", "wg*"),
)
V6_OPEN = NftPlan(proxy_port_v4=None, proxy_port_v6=2121, fail_closed=False)


@pytest.mark.parametrize(
    ("plan", "golden"),
    [(V4, GOLDEN_V4), (V4_V6_IFACES, GOLDEN_V4_V6_IFACES), (V6_OPEN, GOLDEN_V6_OPEN)],
    ids=["v4", "v4+v6+ifaces", "v6-fail-open"],
)
def test_render_golden(plan: NftPlan, golden: str) -> None:
    assert render(plan) == golden


def test_no_line_closes_two_blocks() -> None:
    """nft 1.0.6 rejects ``{ ...; } }`` on one line."""
    for plan in (V4, V4_V6_IFACES, V6_OPEN):
        assert not re.search(r"\}[^\n]*\}[ \t]*$", render(plan), re.MULTILINE)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"table": "bad name"},
        {"table": ""},
        {"mark": 0},
        {"mark": 1 << 32},
        {"proxy_port_v4": 0},
        {"proxy_port_v6": 65536},
        {"ftp_ports": ()},
        {"ftp_ports": (0,)},
        {"inside_ifaces": ('eth0" accept; #',)},
        {"inside_ifaces": ("a" * 16,)},
        {"inside_ifaces": ("..",)},
        {"inside_ifaces": ("eth 0",)},
    ],
)
def test_plan_validation(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"proxy_port_v4": 2121, "proxy_port_v6": None}
    with pytest.raises(ValueError):
        NftPlan(**{**base, **kwargs})  # type: ignore[arg-type]


def test_families() -> None:
    assert V4.families == (4,)
    assert V4_V6_IFACES.families == (4, 6)
    assert NftPlan(proxy_port_v4=None, proxy_port_v6=None).families == ()


@pytest.mark.lab
@pytest.mark.parametrize("plan", [V4, V4_V6_IFACES], ids=["v4", "v4+v6+ifaces"])
def test_apply_list_remove(lab: Any, plan: NftPlan) -> None:
    ns = lab.netns()
    assert list_table(plan.table, netns=ns) is None
    apply(render(plan), netns=ns)
    first = list_table(plan.table, netns=ns)
    assert first is not None
    assert "socket transparent 1 meta mark set" in first
    assert f"tproxy ip to :{plan.proxy_port_v4}" in first
    if plan.proxy_port_v6 is not None:
        assert f"tproxy ip6 to :{plan.proxy_port_v6}" in first
    assert "reject with tcp reset" in first
    apply(render(plan), netns=ns)  # idempotent: same state, no duplicate rules
    assert list_table(plan.table, netns=ns) == first
    # other tables of the namespace are left alone
    apply("table inet other {\n\tchain c {\n\t\ttype filter hook input priority 0;\n\t}\n}\n", ns)
    remove(plan.table, netns=ns)
    remove(plan.table, netns=ns)
    assert list_table(plan.table, netns=ns) is None
    assert list_table("other", netns=ns) is not None


@pytest.mark.lab
def test_apply_reports_nft_error(lab: Any) -> None:
    ns = lab.netns()
    with pytest.raises(KernelSetupError, match=r"nft -f - failed in netns .*syntax error"):
        apply("table inet x { chain y { bogus; } }\n", netns=ns)
