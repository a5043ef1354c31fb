"""ftpalg.ops.logs: escaping of network bytes, password redaction, one event per line."""

from __future__ import annotations

import io
import json
import re
import string
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from ftpalg.ops.logs import configure, escape, get_logger, one_line, redact_command

PLAIN = "".join(c for c in string.printable if c.isprintable() and c != "\\")


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def no_control(text: str) -> bool:
    return all(ord(c) >= 0x20 and ord(c) != 0x7F for c in text)


# --- escape ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", ""),
        (b"USER bob\r\n", r"USER bob\r\n"),
        (b"227 Entering Passive Mode (10,0,0,5,4,1).", "227 Entering Passive Mode (10,0,0,5,4,1)."),
        (b"\x1b[2J\x1b]0;pwned\x07", r"\x1b[2J\x1b]0;pwned\x07"),
        (b"a\\b", r"a\\b"),
        (b"\x00\t\x7f\x80\xff", r"\x00\x09\x7f\x80\xff"),
        ("é\n", r"\xc3\xa9\n"),
        ("\u2028", r"\xe2\x80\xa8"),
        ("\ud800", r"\xed\xa0\x80"),  # a lone surrogate does not crash the logger
        (bytearray(b"\r"), r"\r"),
        (memoryview(b"\n"), r"\n"),
    ],
)
def test_escape(data: bytes | str, expected: str) -> None:
    assert escape(data) == expected


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (b"a" * 10, 4, "aaaa…(+6 bytes)"),
        (b"a" * 10, 10, "a" * 10),
        (b"\r\n" * 3, 5, r"\r\n…(+4 bytes)"),  # never cut an escape in half
        (b"\xff", 3, "…(+1 bytes)"),
        (b"x", 0, "…(+1 bytes)"),
        (b"a" * 300, 200, "a" * 200 + "…(+100 bytes)"),
    ],
)
def test_escape_truncates(data: bytes, limit: int, expected: str) -> None:
    assert escape(data, limit) == expected


def test_escape_rejects_negative_limit() -> None:
    with pytest.raises(ValueError):
        escape(b"x", -1)


@given(st.binary(max_size=2000), st.integers(0, 400))
def test_escape_output_is_safe_and_bounded(data: bytes, limit: int) -> None:
    out = escape(data, limit)
    assert no_control(out)
    assert len(out) <= limit + 20


def _escape_bytewise(raw: bytes, limit: int) -> str:
    """escape() by its definition: token by token, cut before the token that does not fit."""
    from ftpalg.ops.logs import _TOKENS

    out, used = [], 0
    for i, byte in enumerate(raw):
        used += len(_TOKENS[byte])
        if used > limit:
            return "".join(out) + f"…(+{len(raw) - i} bytes)"
        out.append(_TOKENS[byte])
    return "".join(out)


@given(
    st.binary(max_size=400) | st.sampled_from([b"229 (|||1|)\r\n", b"\\" * 150]),
    st.integers(0, 400),
)
def test_escape_is_its_bytewise_definition(data: bytes, limit: int) -> None:
    assert escape(data, limit) == _escape_bytewise(data, limit)


@given(st.binary(max_size=500))
def test_escape_default_limit(data: bytes) -> None:
    out = escape(data)
    assert no_control(out) and len(out) <= 220


@given(st.text(alphabet=PLAIN, max_size=200))
def test_escape_keeps_printable_ascii(text: str) -> None:
    assert escape(text.encode()) == text
    assert escape(text) == text


# --- redact_command ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"PASS hunter2\r\n", r"PASS ****\r\n"),
        (b"pass hunter2\n", r"pass ****\n"),
        (b"PaSs hunter2", "PaSs ****"),
        (b"PASS\r\n", r"PASS ****\r\n"),  # an empty password looks like any other
        (b"PASS  two words \x1b[31m\r\n", r"PASS ****\r\n"),
        (b"ACCT dept-42\r\n", r"ACCT ****\r\n"),
        (b"  PASS hunter2\r\n", r"  PASS ****\r\n"),
        (b"\xff\xf4\xff\xf2PASS hunter2\r\n", r"\xff\xf4\xff\xf2PASS ****\r\n"),
        (b"\xff\xfb\x01PASS hunter2\r\n", r"\xff\xfb\x01PASS ****\r\n"),
        (b"PASShunter2\r\n", r"PASS ****\r\n"),
        (b"USER bob\r\n", r"USER bob\r\n"),
        (b"PASV\r\n", r"PASV\r\n"),
        (b"PORT 10,0,0,5,18,67\r\n", r"PORT 10,0,0,5,18,67\r\n"),
        (b"SITE PASS x\r\n", r"SITE PASS x\r\n"),
        (b"\x1b[2JUSER x\r\n", r"\x1b[2JUSER x\r\n"),
    ],
)
def test_redact_command(line: bytes, expected: str) -> None:
    assert redact_command(line) == expected


@given(st.sampled_from([b"PASS", b"pass", b"Acct"]), st.binary(max_size=300))
def test_redact_never_shows_the_secret(verb: bytes, secret: bytes) -> None:
    secret = secret.replace(b"\r", b"").replace(b"\n", b"")
    assert redact_command(verb + b" " + secret + b"\r\n") == verb.decode() + r" ****\r\n"


@given(st.binary(max_size=300))
def test_redact_output_is_safe(line: bytes) -> None:
    assert no_control(redact_command(line))


# --- configure / get_logger --------------------------------------------------------------------

HOSTILE = "x\r\ny\x1b[31m\u2028z\x85"


def test_json_lines() -> None:
    out = io.StringIO()
    configure("json", "info", out)
    log = get_logger(session="s1")
    log.debug("hidden")
    log.info("rewrite", before=b"PORT 1,2,3,4,18,67\r\n", peer=IPv4Address("10.0.0.5"))
    log.warning("odd", text=HOSTILE)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first)[:3] == ["ts", "level", "event"]
    assert first["level"] == "info" and first["event"] == "rewrite" and first["session"] == "s1"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert first["before"] == r"PORT 1,2,3,4,18,67\r\n"
    assert first["peer"] == "10.0.0.5"
    assert second["text"] == HOSTILE  # JSON escapes it; the decoded value is unchanged
    assert no_control(out.getvalue().replace("\n", ""))


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_one_event_per_line_even_with_exceptions(log_format: str) -> None:
    out = io.StringIO()
    configure(log_format, "debug", out)  # type: ignore[arg-type]
    log = get_logger(session="s2")
    log.info(HOSTILE, value=HOSTILE, raw=HOSTILE.encode("utf-8", "surrogatepass"))
    try:
        raise ValueError("bad\r\nthing")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    assert text.count("\n") == 2 and text.endswith("\n")
    assert no_control(text.replace("\n", ""))
    assert all(ch not in text for ch in "\r\x1b\u2028\x85")
    if log_format == "console":
        assert "session=s2" in text and "ValueError" in text


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["debug", "info", "warning", "error"]),
        ("info", ["info", "warning", "error"]),
        ("warning", ["warning", "error"]),
        ("error", ["error"]),
    ],
)
def test_level_filtering(level: str, shown: list[str]) -> None:
    out = io.StringIO()
    configure("json", level, out)  # type: ignore[arg-type]
    log = get_logger()
    log.debug("e")
    log.info("e")
    log.warning("e")
    log.error("e")
    assert [json.loads(line)["level"] for line in out.getvalue().splitlines()] == shown


def test_console_format_is_plain_text() -> None:
    out = io.StringIO()
    configure("console", "info", out)
    get_logger(session="s3").info("listening", addr=IPv4Address("0.0.0.0"), data=b"\x1b")
    line = out.getvalue()
    assert "[info" in line and "listening" in line and "session=s3" in line
    assert "addr=0.0.0.0" in line and r"data=\x1b" in line
    assert "\x1b" not in line


def test_console_format_keeps_the_events_field_order() -> None:
    """A rewrite reads before= then after=, as the event has them (not sorted by name)."""
    out = io.StringIO()
    configure("console", "info", out)
    get_logger(session="s3").info("rewrite", kind="227", before="x", after="y", listen="z")
    line = out.getvalue()
    order = [line.index(k) for k in ("session=", "kind=", "before=", "after=", "listen=")]
    assert order == sorted(order), line


def test_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    get_logger().info("hello")
    assert json.loads(capsys.readouterr().err)["event"] == "hello"


def test_configure_rejects_unknown_values() -> None:
    with pytest.raises(ValueError):
        configure("xml", "info")  # type: ignore[arg-type]


def test_one_line() -> None:
    assert one_line("plain é text") == "plain é text"
    assert one_line("a\r\nb\x1b\x7f\u2028") == r"a\r\nb\x1b\x7f\u2028"


# --- the JSON line in one step is the chain it replaced ------------------------------------------


def _chain_line(method: str, event_dict: dict[str, object]) -> str:
    """What the JSON format wrote before `_json_line`: structlog's processors one by one."""
    from ftpalg.ops.logs import _OneLine, _prepare

    d: object = dict(event_dict)
    for proc in (
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _prepare,
        structlog.processors.format_exc_info,
        _OneLine(structlog.processors.JSONRenderer(default=str)),
    ):
        d = proc(None, method, d)  # type: ignore[arg-type]
    assert isinstance(d, str)
    return d


_TS = re.compile(r'"ts": "[^"]*"')


@pytest.mark.parametrize(
    ("method", "event_dict"),
    [
        ("info", {"event": "rewrite", "session": "1f", "before": b"PORT 1,2\r\n", "n": 3}),
        ("warning", {"session": "2", "event": "odd", "text": HOSTILE, "ok": True, "f": 1.5}),
        ("warn", {"event": "x", "level": "bogus", "ts": "bogus", "peer": IPv4Address("10.0.0.1")}),
        ("debug", {"a": None, "l": [1, "b"], "d": {"k": "v"}, "raw": bytearray(b"\x7f\x00")}),
        ("error", {"event": b"\x1b[31m", "value": memoryview(b"a\r\nb"), "t": (1, 2)}),
        ("info", {"event": "e", "nested": [b"x"], "obj": object}),
    ],
)
def test_json_line_is_the_processor_chain(method: str, event_dict: dict[str, object]) -> None:
    from ftpalg.ops.logs import _json_line

    structlog.contextvars.bind_contextvars(request="r1", session="ctx")
    try:
        new = _json_line(None, method, dict(event_dict))
        old = _chain_line(method, event_dict)
    finally:
        structlog.contextvars.clear_contextvars()
    assert _TS.sub('"ts": "T"', new) == _TS.sub('"ts": "T"', old)
    assert new.startswith('{"ts": "') and '"level": ' in new


def test_json_line_with_an_exception_is_the_processor_chain() -> None:
    from ftpalg.ops.logs import _json_line

    try:
        raise ValueError("bad\r\nthing")
    except ValueError:
        new = _json_line(None, "exception", {"event": "failed", "exc_info": True})
        old = _chain_line("exception", {"event": "failed", "exc_info": True})
    assert _TS.sub('"ts": "T"', new) == _TS.sub('"ts": "T"', old)
    assert "ValueError" in new and "\n" not in new
