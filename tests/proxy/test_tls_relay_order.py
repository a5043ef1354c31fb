"""The PROT P relay (ftpalg/proxy/tls_relay.py) keeps the byte order of an upload whose first
bytes arrive before the server's transport stands: they are written first, by that
transport's connection_made, and bytes arriving later cannot overtake them. (Seen once in CI
before the fix: an upload through `tls = terminate` arrived with the right size and the
wrong sha256.)"""

from __future__ import annotations

import asyncio

from ftpalg.proxy.tls_relay import _Leg, _Relay


class Recorder:
    """Stands in for the server's plain transport: what was written, in order."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def test_early_bytes_are_written_before_later_ones() -> None:
    loop = asyncio.new_event_loop()
    try:
        relay = _Relay(loop)
        client, server = _Leg(relay, "client"), _Leg(relay, "server")
        client.peer, server.peer = server, client
        client.data_received(b"first ")  # the server's transport does not stand yet
        client.data_received(b"second ")
        transport = Recorder()
        server.connection_made(transport)  # type: ignore[arg-type]
        client.data_received(b"third")  # straight through, after the early ones
        assert b"".join(transport.written) == b"first second third"
        assert client.early == [] and client.received == len(b"first second third")
    finally:
        loop.close()
