"""`tls = terminate`: ftpalg is the TLS server for the client of a plain legacy server.

How this works (RFC 4217, explicit FTPS). The client's `AUTH TLS` (or `SSL`, `TLS-C`) is
answered by ftpalg itself with `234`, followed by `StartTls(CLIENT)`: the adapter upgrades the
client's side of the control connection, and what the core sees from the client from then on
is the decrypted stream. Whatever plaintext the client had sent behind the `AUTH` line is
discarded unread (a command injected before the handshake must not count as protected,
CVE-2011-0411). `PBSZ` (only 0 makes sense on a stream) and `PROT` (`P`: data connections
are TLS on the client's side, `C`: plain) are answered by ftpalg too; `PROT` is told to the
adapter as `ProtectData`. `AUTH`, `PBSZ` and `PROT` never reach the server: it sees plain FTP.
`FEAT` is forwarded and its reply gets ` AUTH TLS`, ` PBSZ` and ` PROT` unless it lists them
itself (a TLS server behind `tls_upstream`); a server that does not know `FEAT` gets a `211`
list with just those. With `require_tls`, `USER` and `PASS`
before `AUTH` are refused with `530`: no password crosses in clear.
"""

from __future__ import annotations

from ftpalg.core.direction import Direction
from ftpalg.core.messages import Action, ProtectData, Send, Side, StartTls
from ftpalg.core.observations import TlsTerminated

FEATURES = (b" AUTH TLS\r\n", b" PBSZ\r\n", b" PROT\r\n")
AUTH_OK = b"234 AUTH TLS successful, start the TLS handshake.\r\n"
AUTH_AGAIN = b"503 Already using TLS.\r\n"
AUTH_UNKNOWN = b"504 AUTH mechanism not supported (use AUTH TLS).\r\n"
NEEDS_AUTH = b"503 Send AUTH TLS first.\r\n"
PBSZ_OK = b"200 PBSZ=0\r\n"
NEEDS_PBSZ = b"503 Send PBSZ 0 before PROT.\r\n"
PROT_OK = b"200 Protection level set.\r\n"
PROT_UNSUPPORTED = b"536 Protection level not supported (use P or C).\r\n"
PROT_UNKNOWN = b"504 Unknown protection level.\r\n"
TLS_REQUIRED = b"530 TLS required: send AUTH TLS before logging in.\r\n"
MECHANISMS = (b"TLS", b"SSL", b"TLS-C")


def _split(line: bytes) -> tuple[bytes, bytes]:
    """Verb and argument, leading and separating white space ignored: a server that
    tolerates ` PASS x` must not get it in clear under require_tls."""
    words = line.split(None, 1)
    verb = words[0].upper() if words else b""
    return verb, (words[1].strip().upper() if len(words) > 1 else b"")


class Terminate:
    __slots__ = ("feat", "listed", "multi", "pbsz", "require", "secured")

    def __init__(self, require: bool) -> None:
        self.require = require  # require_tls: no USER/PASS in clear
        self.secured = False  # the client's control connection is TLS
        self.pbsz = False
        self.feat = 0  # FEAT replies still to come
        self.multi = False  # inside a multi-line FEAT reply
        self.listed: set[bytes] = set()  # our features the server's FEAT reply lists itself

    def client_line(self, line: bytes, out: list[Action], client: Direction) -> bool:
        """True when ftpalg answered `line` itself (it is not forwarded)."""
        verb, arg = _split(line)
        if verb == b"AUTH":
            if self.secured:
                out.append(Send(Side.CLIENT, AUTH_AGAIN))
            elif arg not in MECHANISMS:
                out.append(Send(Side.CLIENT, AUTH_UNKNOWN))
            else:
                self.secured = True
                out.append(Send(Side.CLIENT, AUTH_OK))
                out.append(StartTls(Side.CLIENT))
                out.append(TlsTerminated(line))
                client.held.clear()  # plaintext behind AUTH: never taken as protected
                client.framer.eof()
                client.backlog = 0
                client.partial_since = None
            return True
        if verb == b"PBSZ":
            self.pbsz = self.secured
            out.append(Send(Side.CLIENT, PBSZ_OK if self.secured else NEEDS_AUTH))
            return True
        if verb == b"PROT":
            if not self.pbsz:
                reply = NEEDS_PBSZ if self.secured else NEEDS_AUTH
            elif arg in (b"P", b"C"):
                reply = PROT_OK
            else:
                reply = PROT_UNSUPPORTED if arg in (b"S", b"E") else PROT_UNKNOWN
            out.append(Send(Side.CLIENT, reply))
            if reply is PROT_OK:
                out.append(ProtectData(arg == b"P"))
            return True
        if verb in (b"USER", b"PASS") and self.require and not self.secured:
            out.append(Send(Side.CLIENT, TLS_REQUIRED))
            return True
        if verb == b"FEAT":
            self.feat += 1
        return False

    def server_line(self, line: bytes) -> bytes:
        """What the client gets for a server line: a FEAT reply with our features added."""
        if not self.feat:
            return line
        if line.startswith(b"211-"):
            self.multi = True
        if line[3:4] not in (b" ", b"\r", b"\n") or not line[:3].isdigit():
            if self.multi and (feature := b" " + line.strip().upper() + b"\r\n") in FEATURES:
                self.listed.add(feature)  # a TLS server (tls_upstream) lists them itself
            return line  # not a final reply line
        self.feat -= 1
        multi, self.multi = self.multi, False
        missing = b"".join(f for f in FEATURES if f not in self.listed)
        self.listed.clear()
        if multi and line.startswith(b"211"):
            return missing + line  # before the multi-line reply's last line
        if line[:1] in (b"2", b"5"):  # a one-line 211, or FEAT unknown to the server
            return b"211-Features:\r\n" + b"".join(FEATURES) + b"211 End\r\n"
        return line
