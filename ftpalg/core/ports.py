"""Port choice for a data listener (docs/core.md): the announced port first, as the kernel does,
then random ports from the configured data-port range, each port tried at most once. With
`strict` (reverse mode) an announced port outside the range is never tried: the first is a
random one from the range.

The random source is injected (anything with `randrange`), so tests are deterministic.
"""

from __future__ import annotations

from typing import Protocol


class RandomSource(Protocol):
    def randrange(self, start: int, stop: int, /) -> int: ...


class PortChooser:
    __slots__ = ("_high", "_low", "_rng", "_tried", "_tries_left", "first")

    def __init__(
        self,
        original: int,
        port_range: tuple[int, int],
        rng: RandomSource,
        tries: int,
        strict: bool = False,
    ):
        self._low, self._high = port_range
        self._rng = rng
        self._tried: set[int] = set()
        self._tries_left = tries
        self.first = original
        if strict and not self._low <= original <= self._high:  # the range or nothing
            self.first = self._rng.randrange(self._low, self._high + 1)
            self._tried.add(self.first)

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
