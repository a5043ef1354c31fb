"""Where observations go: the typed sinks (metrics, xferlog), then one log line.

How this works. The gateway and every control session hold an `Observer` (sessions a bound
copy carrying their session id and client). Calling it with an `Observation` hands the typed
object to each sink, then renders it as one structlog line (`event`, `level`, `fields()`), so
a metric moves exactly when a log line says why, and no sink ever reads log text. A failing
sink is reported once (`observer_failed`) and never breaks a session. Lines that no sink
needs (started, draining, ...) go straight to `log`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from structlog import BoundLoggerBase

from ftpalg.core.observations import Observation
from ftpalg.ops.events import Failed, Fault

Sink = Callable[[Observation], None]
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Observer:
    def __init__(
        self, log: Any, sinks: list[Sink] | None = None, broken: set[int] | None = None
    ) -> None:
        self.log = log
        self.sinks: list[Sink] = [] if sinks is None else sinks  # shared by bound copies
        self._broken = set() if broken is None else broken
        # a bound structlog logger knows its level (the lazy proxy and test loggers: None)
        self._enabled: Callable[[int], bool] | None = (
            getattr(log, "is_enabled_for", None) if isinstance(log, BoundLoggerBase) else None
        )

    @property
    def debug(self) -> bool:
        """Debug lines are written (asked once per session: the command/reply trace)."""
        return self._enabled is not None and self._enabled(logging.DEBUG)

    def bind(self, **context: Any) -> Observer:
        return Observer(self.log.bind(**context), self.sinks, self._broken)

    def __call__(self, obs: Observation) -> None:
        for sink in self.sinks:
            try:
                sink(obs)
            except Exception as exc:  # a metrics bug must not break a session
                if id(sink) not in self._broken:
                    self._broken.add(id(sink))
                    self(Failed(Fault.OBSERVER, f"{obs.event}: {type(exc).__name__}: {exc}"))
        level = obs.level
        enabled = self._enabled
        if enabled is None or enabled(_LEVELS[level]):  # no fields() for a line not written
            getattr(self.log, level)(obs.event, **obs.fields())
