"""The invariant checker's own model of `tls = terminate` (core/tls_terminate.py), written
independently of it from RFC 4217 and docs/ftps.md: what ftpalg answers itself (AUTH, PBSZ,
PROT; USER/PASS before AUTH under require_tls), what it tells the adapter (StartTls,
ProtectData), and the FEAT reply with the TLS features added (those the server does not
list itself). Only the reply texts are
shared (they are not behaviour)."""

from __future__ import annotations

from dataclasses import dataclass

from ftpalg.core import tls_terminate as T
from ftpalg.core.messages import Action, ProtectData, Side, StartTls
from ftpalg.core.observations import Observation, TlsTerminated


@dataclass
class Answer:
    reply: bytes  # ftpalg's own reply to the client
    then: tuple[Action | Observation, ...] = ()  # what follows it, in order
    secured_now: bool = False  # the client's plaintext behind the line is dropped


class TerminateModel:
    def __init__(self, require: bool) -> None:
        self.require = require
        self.secured = False
        self.pbsz = False
        self.feat_pending = 0
        self.in_multi = False
        self.server_lists: list[bytes] = []  # feature lines of the FEAT reply going on

    def client(self, line: bytes) -> Answer | None:
        """ftpalg's own answer to a client line, or None: forwarded."""
        words = line.strip().split(None, 1)
        verb = words[0].upper() if words else b""
        arg = words[1].strip().upper() if len(words) > 1 else b""
        if verb == b"AUTH":
            if self.secured:
                return Answer(T.AUTH_AGAIN)
            if arg not in (b"TLS", b"SSL", b"TLS-C"):
                return Answer(T.AUTH_UNKNOWN)
            self.secured = True
            return Answer(T.AUTH_OK, (StartTls(Side.CLIENT), TlsTerminated(line)), True)
        if verb == b"PBSZ":
            if not self.secured:
                return Answer(T.NEEDS_AUTH)
            self.pbsz = True
            return Answer(T.PBSZ_OK)
        if verb == b"PROT":
            if not self.secured:
                return Answer(T.NEEDS_AUTH)
            if not self.pbsz:
                return Answer(T.NEEDS_PBSZ)
            if arg in (b"P", b"C"):
                return Answer(T.PROT_OK, (ProtectData(arg == b"P"),))
            return Answer(T.PROT_UNSUPPORTED if arg in (b"S", b"E") else T.PROT_UNKNOWN)
        if verb in (b"USER", b"PASS") and self.require and not self.secured:
            return Answer(T.TLS_REQUIRED)
        if verb == b"FEAT":
            self.feat_pending += 1
        return None

    def server(self, line: bytes) -> bytes:
        """What the client must get for a server line."""
        if not self.feat_pending:
            return line
        if line[:4] == b"211-":
            self.in_multi = True
            return line
        final = len(line) >= 4 and line[:3].isdigit() and line[3:4] in b" \r\n"
        if not final:
            if self.in_multi:
                self.server_lists.append(line.strip().upper())
            return line
        self.feat_pending -= 1
        multi, self.in_multi = self.in_multi, False
        ours = (b"AUTH TLS", b"PBSZ", b"PROT")  # added unless the server lists them itself
        listed, self.server_lists = self.server_lists, []
        added = b"".join(b" " + f + b"\r\n" for f in ours if f not in listed)
        if multi and line[:3] == b"211":
            return added + line
        if line[:1] in (b"2", b"5"):
            return b"211-Features:\r\n" + added + b"211 End\r\n"
        return line
