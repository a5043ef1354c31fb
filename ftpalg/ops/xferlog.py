"""The transfer log in the classic ``xferlog`` format (wu-ftpd, vsftpd, ProFTPD): ``--xferlog``.

How this works. `XferLog.observe` receives every observation (through the same observer as
the metrics) and writes one line for each `DataEnded` (logged as ``data_finished``):

    current-time transfer-time remote-host file-size filename transfer-type
    special-action-flag direction access-mode username service-name
    authentication-method authenticated-user-id completion-status

ftpalg sees neither file names nor users in the data channel; the core notes them from the
client's control lines (``ftpalg.core.transfer``: ``USER``, ``TYPE`` and the transfer command
that used this data connection) and puts them on `DataEnded`. Field by field:
``current-time`` local time as ``ctime()``; ``transfer-time`` whole seconds, at least 1;
``remote-host`` the FTP client's address; ``file-size`` the bytes relayed in the transfer's
direction; ``filename`` the command's argument as the client sent it (relative to the
server's working directory, which ftpalg cannot know; ``.`` for a listing without one, ``-``
when no transfer command was seen), spaces and control characters replaced by ``_`` as
ProFTPD does; ``transfer-type`` ``a`` or ``b`` from ``TYPE``; ``_``; direction ``i`` for
STOR/STOU/APPE, else ``o`` (listings are logged too, as ``o``); access-mode ``a`` for the
users ``anonymous``/``ftp``, else ``r``; the USER name (never the anonymous password, which
ftpalg never looks at); ``ftp 0 *``; ``c`` complete or ``i`` incomplete. A data connection
that no transfer command used and that carried no byte is not a transfer: no line.

The file is opened in append mode before privileges are dropped, and reopened on SIGHUP
(log rotation); a write error is reported once per opening, then lines are dropped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TextIO

from ftpalg.core.observations import DataEnded, Observation
from ftpalg.core.transfer import UPLOAD_VERBS
from ftpalg.ops.events import Failed, Fault

_ANONYMOUS = {"anonymous", "ftp"}
_LISTINGS = {"LIST", "NLST", "MLSD"}


def _text(value: Any, empty: str) -> str:
    """A field value as one token: spaces and control characters become ``_``."""
    if value is None:
        return empty
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    text = "".join("_" if c.isspace() or not c.isprintable() else c for c in text)
    return text or empty


def format_line(ended: DataEnded, now: float) -> str:
    """One xferlog line (no newline) for a finished data connection."""
    command = ended.command
    upload = command in UPLOAD_VERBS
    size = ended.bytes_to_server if upload else ended.bytes_to_client
    filename = _text(ended.path, "." if command in _LISTINGS else "-")
    user = _text(ended.user, "*")
    kind = "a" if ended.type.upper() in ("A", "E") else "b"
    seconds = max(1, round(ended.seconds))
    return " ".join(
        [
            time.ctime(now),
            str(seconds),
            str(ended.client.host),
            str(size),
            filename,
            kind,
            "_",
            "i" if upload else "o",
            "a" if user.lower() in _ANONYMOUS else "r",
            user,
            "ftp",
            "0",
            "*",
            "c" if ended.ok else "i",
        ]
    )


class XferLog:
    def __init__(self, path: str | None, report: Callable[[Failed], None]) -> None:
        """`report` is called when the file cannot be opened or written."""
        self.path = path
        self.report = report
        self._file: TextIO | None = None
        self._failed = False

    def open(self) -> None:
        """(Re)open the file; raises OSError (the old file, if any, stays in use)."""
        if self.path is None:
            self.close()
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        new = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        self.close()
        self._file, self._failed = new, False

    def reopen(self, path: str | None) -> None:
        """For SIGHUP: switch to `path` (maybe the same, after rotation); report failures."""
        old = self.path
        self.path = path
        try:
            self.open()
        except OSError as exc:
            self.path = old
            self.report(Failed(Fault.XFERLOG_OPEN, f"{path}: {exc.strerror or exc}"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def observe(self, obs: Observation) -> None:
        if not isinstance(obs, DataEnded) or self._file is None or self._failed:
            return
        if obs.command is None and not (obs.bytes_to_client or obs.bytes_to_server):
            return  # opened and closed unused (pyftpdlib connects on PORT, before any RETR)
        try:
            self._file.write(format_line(obs, time.time()) + "\n")
        except OSError as exc:
            self._failed = True
            self.report(Failed(Fault.XFERLOG_WRITE, f"{self.path}: {exc.strerror or exc}"))
