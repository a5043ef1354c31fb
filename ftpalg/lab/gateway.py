"""nftables rule sets for the lab gateway, as text for `lab.nft("gw", ...)`.

How this works: every rule set lives in one table, `inet ftpalg_lab` (IPv4 and IPv6 together),
and is applied atomically with the "add table; delete table; table {...}" idiom, so applying
another rule set replaces the previous one. The forward chain has policy drop in every set:

- `kernel_nat_ruleset`: the kernel reference path. A `ct helper` object of type "ftp"
  (`l3proto inet` covers both families on nft 1.0.6 / Linux 6.x) is assigned to new connections
  to tcp/21 in a prerouting filter chain; masquerade on the outside interface. Forward accepts
  new control connections inside->outside to tcp/21 and `ct state established,related`, so a
  data connection passes only as an expectation of the helper. `helper=False` leaves the
  helper out: then only the control connection passes and active mode must fail.
  `outbound=True` forwards every new connection from the inside (a home router): what
  passive FTPS needs there, since the helper cannot read an encrypted `227`.
- `closed_gateway_ruleset`: nothing is forwarded at all. The base for ftpalg's transparent
  mode, which installs its own tproxy table next to this one.
- `routing_ruleset`: plain routing, forward policy accept, no NAT and no `ct` expression (so
  conntrack stays off in the gateway namespace): the "direct" baseline of the benchmarks.
- `redirect_ruleset`: closed forward plus a NAT `redirect` of inside tcp/21 to a local port,
  the interception an old REDIRECT + `SO_ORIGINAL_DST` proxy (SuSE ftp-proxy) needs.

nft 1.0.6 rejects `{ ...; } }` on one line, so closing braces always start a new line.
"""

from __future__ import annotations

from ftpalg.lab.netns import Lab

TABLE = "ftpalg_lab"
HELPER = "ftp-std"


def _replace_table(body: str) -> str:
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{body}}}\n"


def kernel_nat_ruleset(lab: Lab, helper: bool = True, outbound: bool = False) -> str:
    """The kernel FTP helper + masquerade; forward drops everything the helper did not expect
    (`outbound`: every new connection inside -> outside is forwarded, as on a home router)."""
    inside, outside = lab.ifnames.gw_inside, lab.ifnames.gw_outside
    new = "" if outbound else " tcp dport 21"
    helper_obj = (
        f"    ct helper {HELPER} {{\n"
        f'        type "ftp" protocol tcp\n'
        f"        l3proto inet\n"
        f"    }}\n"
    )
    assign = f'        tcp dport 21 ct helper set "{HELPER}"\n' if helper else ""
    body = (
        (helper_obj if helper else "")
        + "    chain prerouting {\n"
        + "        type filter hook prerouting priority filter; policy accept;\n"
        + assign
        + "    }\n"
        + "    chain forward {\n"
        + "        type filter hook forward priority filter; policy drop;\n"
        + "        ct state established,related accept\n"
        + f'        iifname "{inside}" oifname "{outside}"{new} ct state new accept\n'
        + "    }\n"
        + "    chain postrouting {\n"
        + "        type nat hook postrouting priority srcnat; policy accept;\n"
        + f'        oifname "{outside}" masquerade\n'
        + "    }\n"
    )
    return _replace_table(body)


PINHOLE_RULE = "ct mark & 0x80000000 == 0x80000000 accept"  # docs/data-plane.md


def closed_gateway_ruleset(lab: Lab, pinholes: bool = False) -> str:
    """Forward policy drop with no exception: only a local proxy on the gateway can connect;
    with `pinholes`, plus the one rule an operator adds for ftpalg's kernel data plane."""
    body = (
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy drop;\n"
        + (f"        {PINHOLE_RULE}\n" if pinholes else "")
        + "    }\n"
    )
    return _replace_table(body)


def routing_ruleset(lab: Lab) -> str:
    """Forward everything, rewrite nothing: the client talks to the server by plain routing."""
    body = (
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy accept;\n"
        "    }\n"
    )
    return _replace_table(body)


def redirect_ruleset(lab: Lab, port: int) -> str:
    """Nothing forwarded; FTP control from the inside redirected to a local proxy on `port`."""
    inside = lab.ifnames.gw_inside
    body = (
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy drop;\n"
        "    }\n"
        "    chain prerouting {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f'        iifname "{inside}" tcp dport 21 redirect to :{port}\n'
        "    }\n"
    )
    return _replace_table(body)


def apply_kernel_nat(lab: Lab, helper: bool = True, outbound: bool = False) -> None:
    lab.nft("gw", kernel_nat_ruleset(lab, helper=helper, outbound=outbound))


def apply_closed_gateway(lab: Lab, pinholes: bool = False) -> None:
    lab.nft("gw", closed_gateway_ruleset(lab, pinholes))


def apply_routing(lab: Lab) -> None:
    lab.nft("gw", routing_ruleset(lab))


def apply_redirect(lab: Lab, port: int) -> None:
    lab.nft("gw", redirect_ruleset(lab, port))
