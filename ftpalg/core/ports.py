"""Port choice for a data listener (docs/core.md): the announced port first, as the kernel does,
then random ports from the configured data-port range, each port tried at most once.

The random source is injected (anything with `randrange`), so tests are deterministic.
"""

from __future__ import annotations

from typing import Protocol


class RandomSource(Protocol):
    def randrange(self, start: int, stop: int, /) -> int: ...


class PortChooser:
    __slots__ = ("_high", "_low", "_rng", "_tried", "_tries_left", "first")

    def __init__(self, original: int, port_range: tuple[int, int], rng: RandomSource, tries: int):
        self._low, self._high = port_range
        self._rng = rng
        self._tried: set[int] = set()
        self._tries_left = tries
        self.first = original

    def next_port(self) -> int | None:
        """The next port to try after a bind failure, or None when the search is over."""
        span = self._high - self._low + 1
        while self._tries_left > 0 and len(self._tried) < span:
            self._tries_left -= 1
            port = self._rng.randrange(self._low, self._high + 1)
            if port != self.first and port not in self._tried:
                self._tried.add(port)
                return port
        return None
