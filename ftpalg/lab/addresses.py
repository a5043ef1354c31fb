"""Lab addressing: which address and interface name lives where.

How this works: `LabAddresses.for_subnet(N)` derives every address of a lab from one number N
(the client network is 10.N.1.0/24; the documentation networks 2001:db8:1::/64, 203.0.113.0/24
and 2001:db8:2::/64 are used as-is). The addresses exist only inside the lab's namespaces, so
labs running in parallel never see each other's addresses; N only keeps log lines apart.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class LabAddresses:
    """Every address of the lab; `subnet` is the N of the client's 10.N.1.0/24."""

    subnet: int
    client_v4: ipaddress.IPv4Address
    client_v6: ipaddress.IPv6Address
    gw_inside_v4: ipaddress.IPv4Address
    gw_inside_v6: ipaddress.IPv6Address
    gw_outside_v4: ipaddress.IPv4Address
    gw_outside_v6: ipaddress.IPv6Address
    servers_v4: tuple[ipaddress.IPv4Address, ...]
    servers_v6: tuple[ipaddress.IPv6Address, ...]
    inside_net_v4: ipaddress.IPv4Network
    inside_net_v6: ipaddress.IPv6Network
    outside_net_v4: ipaddress.IPv4Network
    outside_net_v6: ipaddress.IPv6Network

    @property
    def server_v4(self) -> ipaddress.IPv4Address:
        return self.servers_v4[0]

    @property
    def server_v6(self) -> ipaddress.IPv6Address:
        return self.servers_v6[0]

    @classmethod
    def for_subnet(cls, n: int) -> LabAddresses:
        if not 1 <= n <= 254:
            raise ValueError(f"subnet must be 1..254, got {n}")
        v4 = ipaddress.IPv4Address
        v6 = ipaddress.IPv6Address
        return cls(
            subnet=n,
            client_v4=v4(f"10.{n}.1.2"),
            client_v6=v6("2001:db8:1::2"),
            gw_inside_v4=v4(f"10.{n}.1.1"),
            gw_inside_v6=v6("2001:db8:1::1"),
            gw_outside_v4=v4("203.0.113.1"),
            gw_outside_v6=v6("2001:db8:2::1"),
            servers_v4=tuple(v4(f"203.0.113.{i}") for i in range(10, 14)),
            servers_v6=tuple(v6(f"2001:db8:2::{i}") for i in range(10, 14)),
            inside_net_v4=ipaddress.IPv4Network(f"10.{n}.1.0/24"),
            inside_net_v6=ipaddress.IPv6Network("2001:db8:1::/64"),
            outside_net_v4=ipaddress.IPv4Network("203.0.113.0/24"),
            outside_net_v6=ipaddress.IPv6Network("2001:db8:2::/64"),
        )


@dataclass(frozen=True)
class LabInterfaces:
    """Interface names (each lives in the namespace its field name says)."""

    client: str
    gw_inside: str
    gw_outside: str
    server: str
