"""What a data connection carries and how its transfer ended, as the control channel tells
(for the xferlog, `data_finished` and `login_failed`).

How this works. ftpalg never sees file names in the data channel; the client's control lines
name them. `USER` names the account, `TYPE` the representation, and each data connection is
used by exactly one transfer command (RETR, STOR, STOU, APPE, LIST, NLST, MLSD) sent after
the PORT/EPRT or 227/229 that announced it — before or after the connection itself is made
(passive clients often connect first). So each announced endpoint starts a new `Transfer`
record (`announced()`); the first transfer command after it fills the record; the data
connection accepted from that endpoint keeps a reference to it (`accepted()`), read when the
connection finishes (`finished()`). One expectation per session at a time, so the latest
record always belongs to the live expectation. PASS and ACCT arguments are never looked at.

Replies. The server answers commands in order, and a command's final reply is the first
`ddd ` line with a 2-5 first digit after it (1xx are preliminary; a multi-line reply ends at
its `ddd ` line). Only while a command of interest (USER, PASS, ACCT, a transfer command
that filled a record) is waiting are the forwarded client commands queued (`waiting`) and
server lines read (`awaiting`): otherwise nothing is done per line. A `530` to USER/PASS/ACCT
or any 5xx to PASS is a failed login (`LoginFailed`). A transfer's final reply goes on its
record: its `DataEnded` (`data_finished`) reports the reply and, when it is not 2xx and the
data connection closed without an error of its own, takes the reply as its `result`. The
data connection and that reply end in either order: a data connection that ends while its
transfer's reply is still due is held (`report()`) until the reply comes, at most
`REPLY_WAIT` seconds (`deadline`, `on_timer()`), or the session ends (`close()`); then it is
reported with what is known (`reply` None).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

from ftpalg.core.messages import Action
from ftpalg.core.observations import DataEnded, LoginFailed

TRANSFER_VERBS = frozenset({"RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"})
UPLOAD_VERBS = frozenset({"STOR", "STOU", "APPE"})
LOGIN_VERBS = frozenset({"USER", "PASS", "ACCT"})
REPLY_WAIT = 5.0  # seconds a finished data connection waits for its transfer's final reply
_MAX_ARG = 4096
_MAX_RESULT = 200
_FINAL = (b"2", b"3", b"4", b"5")


@dataclass(slots=True)
class Transfer:
    command: str | None = None
    path: bytes | None = None
    type: str = "A"  # RFC 959 §3.1.1.1: ASCII until a TYPE command says otherwise
    reply: bytes | None = None  # the command's final reply, without the line end


def settled(ended: DataEnded, reply: bytes | None) -> DataEnded:
    """`ended` with its transfer's final reply: a reply other than 2xx is the result of a
    data connection that closed cleanly (its own error, when it had one, stays the result:
    the more specific of the two; the reply is there too)."""
    if reply is None:
        return ended
    result = ended.result
    if reply[:1] != b"2" and result == "ok":
        result = reply[:_MAX_RESULT].decode("ascii", "backslashreplace")
    return dataclasses.replace(ended, result=result, reply=reply)


class CommandNotes:
    def __init__(self) -> None:
        self.user: bytes | None = None
        self._type = "A"
        self._current = Transfer()
        self._by_conn: dict[int, Transfer] = {}
        # commands forwarded whose final reply is due: (verb, its record or None); kept only
        # while one of interest is among them
        self.waiting: deque[tuple[str, Transfer | None]] = deque()
        self._multi: bytes | None = None  # the code of a multi-line reply being read
        self._held: list[tuple[float, DataEnded, Transfer]] = []  # waiting for their reply
        self.deadline: float | None = None  # the earliest held one's
        self.closed = False

    @property
    def awaiting(self) -> bool:
        """Server lines are read: a reply of interest is due."""
        return bool(self.waiting)

    def client_line(self, line: bytes) -> None:
        """Note one forwarded client line (not an address command)."""
        verb_b, _, arg = line.rstrip(b"\r\n").partition(b" ")
        verb = verb_b.decode("ascii", "replace").upper()
        record: Transfer | None = None
        if verb == "USER":
            self.user = arg[:_MAX_ARG]
        elif verb == "TYPE" and arg[:1].isalpha():
            self._type = arg[:1].decode("ascii").upper()
        elif verb in TRANSFER_VERBS and self._current.command is None:
            record = self._current
            record.command, record.path = verb, arg[:_MAX_ARG]
            record.type = self._type
        if record is not None or verb in LOGIN_VERBS or self.waiting:
            self.waiting.append((verb, record))  # its final reply is paired

    def server_line(self, line: bytes, out: list[Action]) -> None:
        """Read one server line while `awaiting`: a final reply answers the oldest command."""
        code = line[:3]
        if self._multi is not None:  # inside a multi-line reply: only its last line ends it
            if code != self._multi or line[3:4] != b" ":
                return
            self._multi = None
        elif not code.isdigit():
            return
        elif line[3:4] == b"-":
            self._multi = code
            return
        if line[:1] not in _FINAL:
            return  # preliminary (1xx), or not a reply
        verb, record = self.waiting.popleft()
        text = line.rstrip(b"\r\n")
        if verb in LOGIN_VERBS and (code == b"530" or (verb == "PASS" and code[:1] == b"5")):
            out.append(LoginFailed(verb, self.user, text))
        if record is not None:
            record.reply = text
            self._release(record, out)
        if not any(r is not None or v in LOGIN_VERBS for v, r in self.waiting):
            self.waiting.clear()  # only commands of no interest are left

    def announced(self) -> None:
        """A new data endpoint was announced: the next transfer command is for it."""
        self._current = Transfer()

    def accepted(self, conn: int) -> None:
        self._by_conn[conn] = self._current

    def finished(self, conn: int) -> Transfer:
        """What `conn` carried, as far as the control channel said (empty when unknown)."""
        return self._by_conn.pop(conn, None) or Transfer()

    # ---- reporting a data connection after its transfer's final reply ---------------------

    def report(self, ended: DataEnded, record: Transfer, now: float, out: list[Action]) -> None:
        """Report `ended` now, or hold it while the final reply to its transfer is due."""
        due = not self.closed and any(r is record for _, r in self.waiting)
        if not due or record.command is None:
            out.append(settled(ended, record.reply))
            return
        deadline = now + REPLY_WAIT
        self._held.append((deadline, ended, record))
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline

    def _release(self, record: Transfer, out: list[Action]) -> None:
        if not self._held:
            return
        for index, (_, ended, held) in enumerate(self._held):
            if held is record:
                del self._held[index]
                out.append(settled(ended, record.reply))
                self._reset_deadline()
                return

    def on_timer(self, now: float, out: list[Action]) -> None:
        """Report the held connections whose wait is over, with what is known."""
        if self.deadline is None or now < self.deadline:
            return
        out.extend(ended for deadline, ended, _ in self._held if now >= deadline)
        self._held = [item for item in self._held if now < item[0]]
        self._reset_deadline()

    def close(self, out: list[Action]) -> None:
        """The session ends: no reply can come any more."""
        self.closed = True
        for _, ended, _record in self._held:
            out.append(ended)
        self._held.clear()
        self.deadline = None

    def _reset_deadline(self) -> None:
        self.deadline = min((item[0] for item in self._held), default=None)
