"""The gateway's NAT64 decisions (docs/nat64.md), without a network: which upstream a
transparent connection to an address in the prefix gets, and which data plane a session
whose client and server differ in family uses. The real paths run in tests/lab/test_nat64.py.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any, cast

import pytest

from ftpalg.core.messages import Endpoint
from ftpalg.core.session import Faces
from ftpalg.ops.config import Config
from ftpalg.ops.values import parse_endpoint
from ftpalg.proxy.gateway import NAT64_RELAY, Gateway
from ftpalg.proxy.kernel_plane import KernelData
from tests.proxy.rig import (
    Runner,
    recording_observer,
    run_fixture,  # noqa: F401  (the `run` fixture)
)

pytestmark = pytest.mark.timeout(30)
PREFIX = IPv6Network("64:ff9b::/96")
NAT64 = Config(listen=(parse_endpoint("[::]:21"),), nat64_prefix=PREFIX)


def v6(text: str, port: int = 21) -> Endpoint:
    return Endpoint(IPv6Address(text), port)


def v4(text: str, port: int = 21) -> Endpoint:
    return Endpoint(IPv4Address(text), port)


def test_upstream_of_a_transparent_connection(run: Runner) -> None:
    async def main() -> list[Endpoint | None]:
        gateway = Gateway(NAT64, asyncio.get_running_loop(), recording_observer()[0])
        return [
            await gateway._upstream_for(v6("64:ff9b::cb00:710a", 2121)),  # in the prefix
            await gateway._upstream_for(v6("2001:db8:2::10")),  # outside: as before
            await gateway._upstream_for(v4("203.0.113.10")),  # IPv4: as before
            await gateway._upstream_for(v6("64:ff9b::7f00:1")),  # 127.0.0.1: the gateway
            await gateway._upstream_for(v6("::1")),  # the gateway itself, as before
        ]

    assert run(main) == [
        v4("203.0.113.10", 2121),
        v6("2001:db8:2::10"),
        v4("203.0.113.10"),
        None,
        None,
    ]


def test_an_address_in_a_short_prefix_that_embeds_nothing_has_no_upstream(run: Runner) -> None:
    config = Config(listen=NAT64.listen, nat64_prefix=IPv6Network("2001:db8:122::/48"))

    async def main() -> list[Endpoint | None]:
        gateway = Gateway(config, asyncio.get_running_loop(), recording_observer()[0])
        return [
            await gateway._upstream_for(v6("2001:db8:122:c000:2:2100::")),  # 192.0.2.33
            await gateway._upstream_for(v6("2001:db8:122:c000:102:2100::")),  # u octet set
        ]

    assert run(main) == [v4("192.0.2.33"), None]


def test_without_a_prefix_nothing_is_translated(run: Runner) -> None:
    async def main() -> Endpoint | None:
        gateway = Gateway(Config(), asyncio.get_running_loop(), recording_observer()[0])
        return await gateway._upstream_for(v6("64:ff9b::cb00:710a"))

    assert run(main) == v6("64:ff9b::cb00:710a")


def test_nat64_sessions_use_the_relay_and_the_gateway_says_so(run: Runner) -> None:
    nat64 = Faces(
        v6("2001:db8:1::2", 5000),
        v4("203.0.113.10"),
        v6("64:ff9b::cb00:710a"),
        v4("203.0.113.1", 6000),
    )
    same = Faces(
        v6("2001:db8:1::2", 5000),
        v6("2001:db8:2::10"),
        v6("2001:db8:2::10"),
        v6("2001:db8:1::2", 5000),
    )
    kernel = cast(KernelData, object())  # never used: the factory is not called here

    async def main() -> tuple[str, str, Any]:
        observe, records = recording_observer()
        gateway = Gateway(NAT64, asyncio.get_running_loop(), observe, kernel_data=kernel)
        await gateway.start([])
        planes = gateway._plane_factory(nat64)[0], gateway._plane_factory(same)[0]
        return planes[0], planes[1], records

    translated, plain, records = run(main)
    assert (translated, plain) == ("relay", "kernel")
    (line,) = [line for line in records.lines if line.event == "data_plane_relay"]
    assert line.fields == {"sessions": "nat64 (64:ff9b::/96)", "reason": NAT64_RELAY}


def test_a_reload_that_sets_the_prefix_says_so_once(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ftpalg.proxy.gateway.forward_blocked", lambda: None)
    kernel = cast(KernelData, object())
    plain = Config(listen=NAT64.listen)

    async def main() -> list[str]:
        observe, records = recording_observer()
        gateway = Gateway(plain, asyncio.get_running_loop(), observe, kernel_data=kernel)
        await gateway.start([])  # no prefix: nothing to say
        gateway.reconfigure(NAT64)  # the prefix set: one line
        gateway.reconfigure(NAT64)  # unchanged: nothing
        gateway.reconfigure(plain)  # unset: nothing
        return [line.fields["sessions"] for line in records.events("data_plane_relay")]

    assert run(main) == ["nat64 (64:ff9b::/96)"]
