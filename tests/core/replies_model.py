"""The invariant checker's model of how a transfer ends and of failed logins (REPLY-ORDER).

Written from the rules in ftpalg/core/transfer.py, independently of its code: each announced
data endpoint gets a record; the first transfer command forwarded after it fills the record;
commands are queued for their final reply only while a login command or a filled transfer
command is among the unanswered ones; the first `ddd ` line with a 2-5 first digit (outside
a multi-line reply) answers the oldest queued command. A data connection whose transfer's
reply is still due when it ends is reported when that reply comes, `REPLY_WAIT` seconds
later, or when the session ends, whichever is first; its `result` is the reply when that is
not 2xx and the connection had no error of its own, and its `reply` the reply line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftpalg.core.observations import LoginFailed

REPLY_WAIT = 5.0
TRANSFERS = {"RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"}
LOGINS = {"USER", "PASS", "ACCT"}


@dataclass(eq=False)
class Record:
    command: str | None = None
    reply: bytes | None = None


@dataclass
class Held:
    deadline: float
    known: dict[str, Any]  # the DataEnded fields the checker knows, without the reply
    record: Record


class RepliesModel:
    def __init__(self) -> None:
        self.user: bytes | None = None
        self.current = Record()
        self.by_conn: dict[int, Record] = {}
        self.queue: list[tuple[str, Record | None]] = []
        self.multi: bytes | None = None
        self.held: list[Held] = []
        self.closed = False

    def announced(self) -> None:
        self.current = Record()

    def accepted(self, conn: int) -> None:
        self.by_conn[conn] = self.current

    def client_line(self, line: bytes) -> None:
        words = line.rstrip(b"\r\n").split(b" ", 1)
        verb = words[0].decode("ascii", "replace").upper()
        record = None
        if verb == "USER":
            self.user = words[1] if len(words) > 1 else b""
        if verb in TRANSFERS and self.current.command is None:
            record = self.current
            record.command = verb
        interesting = verb in LOGINS or record is not None
        if interesting or self.queue:
            self.queue.append((verb, record))

    def server_line(self, line: bytes) -> list[Any]:
        """What the line reports: LoginFailed and the DataEnded fields of held connections."""
        if not self.queue:
            return []
        code = line[:3]
        if self.multi is not None:
            if not (code == self.multi and line[3:4] == b" "):
                return []
            self.multi = None
        elif not code.isdigit():
            return []
        elif line[3:4] == b"-":
            self.multi = code
            return []
        if code[:1] not in (b"2", b"3", b"4", b"5"):
            return []
        verb, record = self.queue.pop(0)
        text = line.rstrip(b"\r\n")
        found: list[Any] = []
        if verb in LOGINS and (code == b"530" or (verb == "PASS" and code[:1] == b"5")):
            found.append(LoginFailed(verb, self.user, text))
        if record is not None:
            record.reply = text
            for held in [h for h in self.held if h.record is record]:
                self.held.remove(held)
                found.append(self.settle(held.known, record))
        if all(r is None and v not in LOGINS for v, r in self.queue):
            self.queue.clear()
        return found

    def finished(self, conn: int, known: dict[str, Any], now: float) -> dict[str, Any] | None:
        """The fields of the DataEnded now, or None when it waits for its reply."""
        record = self.by_conn.pop(conn, None) or Record()
        due = any(r is record for _, r in self.queue)
        if record.command is not None and due and not self.closed:
            self.held.append(Held(now + REPLY_WAIT, known, record))
            return None
        return self.settle(known, record)

    @staticmethod
    def settle(known: dict[str, Any], record: Record) -> dict[str, Any]:
        reply = record.reply
        out = {**known, "reply": reply}
        if reply is not None and not reply.startswith(b"2") and known["result"] == "ok":
            out["result"] = reply[:200].decode("ascii", "backslashreplace")
        return out

    def due(self, now: float) -> list[dict[str, Any]]:
        out = [{**h.known, "reply": None} for h in self.held if now >= h.deadline]
        self.held = [h for h in self.held if now < h.deadline]
        return out

    def close(self) -> list[dict[str, Any]]:
        self.closed = True
        out = [{**h.known, "reply": None} for h in self.held]
        self.held = []
        return out

    def deadline(self) -> float | None:
        return min((h.deadline for h in self.held), default=None)
