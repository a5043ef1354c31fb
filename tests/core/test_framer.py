from __future__ import annotations

import pytest

from ftpalg.core.framer import LineFramer


def test_lines_and_offsets() -> None:
    f = LineFramer()
    assert f.feed(b"USER a\r\nPA") == [(0, b"USER a\r\n")]
    assert f.feed(b"SS b\r\n\n") == [(8, b"PASS b\r\n"), (16, b"\n")]
    assert f.buffered == 0


def test_partial_line_kept_until_eof() -> None:
    f = LineFramer()
    assert f.feed(b"QUI") == []
    assert f.feed(b"T") == []
    assert f.eof() == (0, b"QUIT")
    assert f.eof() == (4, b"")


def test_cr_is_kept_as_received() -> None:
    assert LineFramer().feed(b"a\rb\r\r\n") == [(0, b"a\rb\r\r\n")]


@pytest.mark.parametrize("chunks", [[b"x" * 4097], [b"x" * 4095, b"yz\n"], [b"x" * 5000 + b"\n"]])
def test_line_limit(chunks: list[bytes]) -> None:
    f = LineFramer(4096)
    for chunk in chunks:
        assert f.feed(chunk) == []
    assert f.error == "line longer than 4096 bytes"


def test_line_of_exactly_the_limit_passes() -> None:
    line = b"x" * 4094 + b"\r\n"
    assert LineFramer(4096).feed(line) == [(0, line)]


def test_nul_refused() -> None:
    f = LineFramer()
    assert f.feed(b"USER a\r\nUSER a\0b\r\nNOOP\r\n") == [(0, b"USER a\r\n")]
    assert f.error == "NUL byte in command line"
    assert f.feed(b"NOOP\r\n") == []  # nothing more after a violation


def test_nul_in_unterminated_rest() -> None:
    f = LineFramer()
    assert f.feed(b"OK\nab\0") == [(0, b"OK\n")] and f.error is not None


def test_many_lines_in_one_chunk_keep_limit_per_line() -> None:
    lines = [b"NOOP\r\n"] * 2000  # 12 000 bytes, every line short
    assert len(LineFramer(4096).feed(b"".join(lines))) == 2000
