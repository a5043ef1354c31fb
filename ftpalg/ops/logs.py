"""structlog setup and safe rendering of untrusted network bytes.

How this works: every event goes through ``_prepare`` (bytes values become ``escape()`` text,
``ts``/``level``/``event`` first), then a renderer (JSON or console), then ``_OneLine``, which
escapes any control character left in the rendered text. Three layers, so that neither a
forgotten ``escape()`` nor an exception message can put a raw CR, LF or ESC into a log line:
one event is always exactly one line. Passwords: log client lines with ``redact_command``.
The JSON format runs all of it as one processor, ``_json_line`` (the same text as the chain,
pinned by tests): it runs for every line of every session, so it is kept cheap.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from ftpalg.core.trace import SECRET as _SECRET  # PASS/ACCT: what is hidden

_NAMED = {0x0D: "\\r", 0x0A: "\\n", 0x5C: "\\\\"}
_TOKENS = tuple(
    chr(b) if 0x20 <= b < 0x7F and b != 0x5C else _NAMED.get(b, f"\\x{b:02x}") for b in range(256)
)
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII except backslash
_NATIVE = (str, int, float, list, tuple, dict, type(None))
_PLAIN_TYPES = frozenset((str, int, float, type(None)))  # kept as they are, no isinstance
_BYTES = (bytes, bytearray, memoryview)
_METHOD_LEVEL = {"warn": "warning", "exception": "error"}  # structlog's add_log_level
_JSON = json.JSONEncoder(default=str)  # json.dumps(..., default=str), built once
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def escape(data: bytes | bytearray | memoryview | str, limit: int = 200) -> str:
    """Render untrusted bytes for a log line: printable ASCII as is, ``\\r``, ``\\n``, ``\\\\``
    and ``\\xNN`` for the rest (text is UTF-8 encoded first). At most ``limit`` characters,
    then ``…(+N bytes)`` giving the count of bytes left out."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) <= limit and _PLAIN.fullmatch(raw):
        return raw.decode("ascii")
    whole = raw.decode("latin-1").translate(_TOKENS)  # every byte as its token, in C
    if len(whole) <= limit:
        return whole
    out: list[str] = []
    used = 0
    for i, byte in enumerate(raw):
        token = _TOKENS[byte]
        used += len(token)
        if used > limit:
            return "".join(out) + f"…(+{len(raw) - i} bytes)"
        out.append(token)
    return "".join(out)


def redact_command(line: bytes, limit: int = 200) -> str:
    """``escape(line)``, except that the argument of ``PASS``/``ACCT`` becomes ``****``.

    The line ending is kept (``PASS ****\\r\\n``); an empty password is shown as ``****`` too.
    """
    match = _SECRET.match(line)
    if match is None:
        return escape(line, limit)
    ending = line[len(line.rstrip(b"\r\n")) :]
    return escape(line[: match.end()], limit) + " ****" + escape(ending)


def one_line(text: str) -> str:
    """Escape every character that could break or restyle a log line (C0, DEL, C1, U+2028...)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _value(key: str, value: Any) -> Any:
    """A value as both formats show it: bytes escaped, other objects (addresses, endpoints)
    as ``str()``; JSON-native values and ``exc_info`` as they are."""
    if isinstance(value, _BYTES):
        return escape(value)
    if not isinstance(value, _NATIVE) and key != "exc_info":
        return str(value)
    return value


def _prepare(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Escape bytes values (defence in depth), show other objects (addresses, endpoints) with
    ``str()`` in both formats, and put ts, level, event first."""
    for key, value in event_dict.items():
        if type(value) not in _PLAIN_TYPES:
            event_dict[key] = _value(key, value)
    head = {k: event_dict.pop(k) for k in ("ts", "level", "event") if k in event_dict}
    return {**head, **event_dict}


def _now() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")  # as TimeStamper("iso")


def _json_line(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
    """The JSON chain in one step (the same line as the console chain's processors would
    make with ``JSONRenderer``): merge contextvars, level, ts, `_prepare`, exc_info, JSON,
    one line. One function instead of seven calls: it runs for every log line."""
    event_dict = structlog.contextvars.merge_contextvars(logger, name, event_dict)
    out: dict[str, Any] = {"ts": _now(), "level": _METHOD_LEVEL.get(name, name)}
    if "event" in event_dict:
        out["event"] = None  # its place: third
    for key, value in event_dict.items():
        if key == "ts" or key == "level":
            continue  # replaced, as add_log_level and TimeStamper do
        out[key] = value if type(value) in _PLAIN_TYPES else _value(key, value)
    if "exc_info" in out:
        return one_line(_JSON.encode(structlog.processors.format_exc_info(logger, name, out)))
    return one_line(_JSON.encode(out))


class _OneLine:
    """Wrap the renderer: whatever it produced, the result has no control characters."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        return one_line(cast(str, self._renderer(logger, name, event_dict)))


def configure(
    log_format: Literal["json", "console"],
    log_level: Literal["debug", "info", "warning", "error"],
    stream: TextIO | None = None,
) -> None:
    """Configure structlog process-wide: one event per line on ``stream`` (default stderr)."""
    if log_format not in ("json", "console") or log_level not in _LEVELS:
        raise ValueError(f"unknown log format or level: {log_format!r}, {log_level!r}")
    if log_format == "json":
        processors: list[Processor] = [_json_line]
    else:
        processors = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            _prepare,
            _OneLine(
                structlog.dev.ConsoleRenderer(colors=False, timestamp_key="ts", sort_keys=False)
            ),  # fields in the order the event has them (before= ahead of after=)
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[log_level]),
        # one write() per line (PrintLogger's print() writes the text and "\n" apart)
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bind: Any) -> FilteringBoundLogger:
    """A logger with ``bind`` on every line, e.g. ``get_logger(session="s1f3")``."""
    return cast(FilteringBoundLogger, structlog.get_logger(**bind))
