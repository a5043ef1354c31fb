"""What a data connection carries, as far as the control channel tells (for the xferlog).

How this works. ftpalg never sees file names in the data channel; the client's control lines
name them. `USER` names the account, `TYPE` the representation, and each data connection is
used by exactly one transfer command (RETR, STOR, STOU, APPE, LIST, NLST, MLSD) sent after
the PORT/EPRT or 227/229 that announced it — before or after the connection itself is made
(passive clients often connect first). So each announced endpoint starts a new `Transfer`
record (`announced()`); the first transfer command after it fills the record; the data
connection accepted from that endpoint keeps a reference to it (`accepted()`), read when the
connection finishes (`finished()`). One expectation per session at a time, so the latest
record always belongs to the live expectation. PASS and ACCT are never looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

TRANSFER_VERBS = frozenset({"RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"})
UPLOAD_VERBS = frozenset({"STOR", "STOU", "APPE"})
_MAX_ARG = 4096


@dataclass(slots=True)
class Transfer:
    command: str | None = None
    path: bytes | None = None
    type: str = "A"  # RFC 959 §3.1.1.1: ASCII until a TYPE command says otherwise


class CommandNotes:
    def __init__(self) -> None:
        self.user: bytes | None = None
        self._type = "A"
        self._current = Transfer()
        self._by_conn: dict[int, Transfer] = {}

    def client_line(self, line: bytes) -> None:
        """Note one forwarded client line (not an address command)."""
        verb_b, _, arg = line.rstrip(b"\r\n").partition(b" ")
        verb = verb_b.decode("ascii", "replace").upper()
        arg = arg[:_MAX_ARG]
        if verb == "USER":
            self.user = arg
        elif verb == "TYPE" and arg[:1].isalpha():
            self._type = arg[:1].decode("ascii").upper()
        elif verb in TRANSFER_VERBS and self._current.command is None:
            self._current.command, self._current.path = verb, arg
            self._current.type = self._type

    def announced(self) -> None:
        """A new data endpoint was announced: the next transfer command is for it."""
        self._current = Transfer()

    def accepted(self, conn: int) -> None:
        self._by_conn[conn] = self._current

    def finished(self, conn: int) -> Transfer:
        """What `conn` carried, as far as the control channel said (empty when unknown)."""
        return self._by_conn.pop(conn, None) or Transfer()
