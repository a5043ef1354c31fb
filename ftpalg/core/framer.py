"""Line framer for the FTP control channel.

How this works: bytes are buffered until a LF; each complete line (terminator included, the CR
before the LF kept exactly as received) is returned with the stream offset of its first byte.
A line longer than `max_line` bytes (terminator included) or any NUL byte is a protocol
violation (docs/core.md, hard limits). `eof()` hands back the unterminated rest, which is
never parsed.
"""

from __future__ import annotations


class LineFramer:
    """`feed()` returns the complete lines; after a violation `error` is set, the lines before
    it are still returned (so chunking never changes the outcome), and nothing more is framed.
    """

    __slots__ = ("_buf", "_offset", "error", "max_line")

    def __init__(self, max_line: int = 4096) -> None:
        self.max_line = max_line
        self.error: str | None = None
        self._buf = bytearray()
        self._offset = 0  # stream offset of the first byte in _buf

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; return the complete lines as (stream offset, line)."""
        if self.error is not None:
            return []
        buf = self._buf
        scan_from = len(buf)
        buf += data
        lines: list[tuple[int, bytes]] = []
        start = 0
        while True:
            end = buf.find(b"\n", max(start, scan_from))
            if end < 0:
                break
            if self._violates(buf, start, end + 1):
                break
            lines.append((self._offset + start, bytes(buf[start : end + 1])))
            start = end + 1
        if start:
            del buf[:start]
            self._offset += start
        if self.error is None:
            self._violates(buf, 0, len(buf))
        return lines

    def _violates(self, buf: bytearray, start: int, end: int) -> bool:
        if buf.find(b"\0", start, end) >= 0:
            self.error = "NUL byte in command line"
        elif end - start > self.max_line:
            self.error = f"line longer than {self.max_line} bytes"
        return self.error is not None

    def eof(self) -> tuple[int, bytes]:
        """The stream ended: return (offset, unterminated rest) and reset the buffer."""
        rest = (self._offset, bytes(self._buf))
        self._offset += len(self._buf)
        self._buf.clear()
        return rest
