"""RFC 6384 translation of the control channel: an IPv6 client, an IPv4 server (docs/nat64.md).

How this works. A session is translated when its client is IPv6 and its server IPv4 (NAT64
in transparent mode, or an IPv6 listener in front of an IPv4 upstream) and no data-mode
conversion is configured. The plain ALG already writes the gateway's own faces into every
address line, so `EPRT |2|` goes upstream as `EPRT |1|<gateway IPv4>|port|` and a 229 names
a listener on the address the client connected to. What an IPv4 server cannot do is left:

- `EPSV` / `EPSV 2` goes upstream as a bare `EPSV` (an IPv4 server answers `EPSV 2` with
  522). When the server refuses it (500/501/502/522), ftpalg sends `PASV` instead and turns
  the 227 into a 229 naming its own listener; the refusal is remembered for the session.
- `EPRT` refused the same way is sent again as `PORT` for the same listener (remembered).
- A 227 the client asked for itself keeps the server's IPv4 address, with ftpalg's port:
  clients that ignore the PASV address (curl, ftplib) then reach the listener.
- `ALGS STATUS64|ENABLE64|DISABLE64`, `EPSV 1` and `LPRT`/`LPSV` are answered by ftpalg.
- Telnet option negotiation is refused (RFC 1123 4.1.2.12) and never relayed.
While a translated command waits for its final reply, later client lines wait too (the
server must not see a `RETR` before the `PASV` that replaces a refused `EPSV`); a command
ftpalg answers itself waits until every earlier reply arrived, so replies keep their order.
`owners` matches final replies (`ddd `, 2xx-5xx) to what was sent upstream, in order.
After `AUTH` the channel is TLS (opaque): nothing is translated any more.
"""

from __future__ import annotations

from collections import deque

from ftpalg.core import policy as P
from ftpalg.core.convert_steps import final, verb
from ftpalg.core.messages import Action, Endpoint, Send, Side
from ftpalg.core.observations import Translated64
from ftpalg.core.rewrite import format_epsv, format_port_numbers, replacement
from ftpalg.core.wire import Address, Kind, Match

CLIENT, SERVER = Side.CLIENT, Side.SERVER
CLIENT_CMD, EPSV, PASV, EPRT, PORT = "client", "epsv", "pasv", "eprt", "port"
_REFUSED = frozenset({b"500", b"501", b"502", b"522"})
_LOCAL = frozenset({"ALGS", "LPRT", "LPSV"})
AS_229, AS_PORT = "229", "PORT"  # how an announced line is rendered (PendingOpen.render)

IAC, WILL, WONT, DO, DONT = 255, 251, 252, 253, 254
_REFUSAL = {WILL: DONT, DO: WONT}  # WONT / DONT need no answer


def translated(client: Address, server: Address) -> bool:
    return client.version == 6 and server.version == 4


class Nat64:
    def __init__(self) -> None:
        self.enabled = True  # ALGS ENABLE64 / DISABLE64
        self.owners: deque[str] = deque([CLIENT_CMD])  # the greeting answers the connect
        self.waiting = False  # a translated command awaits its final reply
        self.epsv_refused = False
        self.eprt_refused = False
        self.held: list[bytes] = []  # lines of a reply whose fate is not decided yet
        self._ours = False  # the line being handled answers ftpalg's own PASV
        self._eprt: Endpoint | None = None  # the listener the EPRT awaiting its reply names

    # ---- the session's hooks --------------------------------------------------------------

    def blocks(self, head: bytes | None, reply_pending: bool) -> bool:
        """Client lines wait: behind a translated command, or to be answered in order (every
        earlier reply delivered: none outstanding, none waiting for its listener)."""
        if self.waiting:
            return True
        if head is None or not (self.owners or reply_pending):
            return False
        return self._answers_itself(head)

    def client_line(self, line: bytes, out: list[Action]) -> bool:
        """True when the line was taken (answered by ftpalg or sent upstream translated)."""
        v = verb(line)
        if v == "ALGS":
            self._algs(line, out)
            return True
        if not self.enabled:
            return False
        if v in ("LPRT", "LPSV"):
            out.append(Send(CLIENT, P.reply(502, f"{v} not implemented; use EPRT or EPSV.")))
            return True
        if v != "EPSV":
            return False
        arg = _argument(line).upper()
        if arg == b"ALL":
            return False  # passed on as it is: the server's answer goes to the client
        if arg not in (b"", b"2"):
            out.append(Send(CLIENT, P.reply(522, "Network protocol not supported, use (2).")))
            return True
        if self.epsv_refused:
            self._own(PASV, out)
            out.append(Translated64("EPSV", "PASV"))
        else:
            self._own(EPSV, out)
            self.waiting = True  # until the answer says whether PASV must replace it
        return True

    def sent(self, out: list[Action], mark: int) -> None:
        """Note the client commands the session passed upstream since `mark`."""
        for action in out[mark:]:
            if isinstance(action, Send) and action.side is SERVER:
                self.owners.append(CLIENT_CMD)

    def announced(
        self, kind: Kind, render: str | None, listen: Endpoint, out: list[Action]
    ) -> None:
        """A client address line went upstream (after its listener was bound)."""
        if render == AS_PORT:
            self.owners.append(PORT)
            out.append(Translated64("EPRT", "PORT"))
        elif kind is Kind.EPRT and self.enabled:
            self.owners.append(EPRT)
            self.waiting, self._eprt = True, listen
        else:
            self.owners.append(CLIENT_CMD)

    def server_line(self, line: bytes, listen: Endpoint | None, out: list[Action]) -> bool:
        """True when the line was taken: held (its reply undecided) or replaced."""
        self._ours = False
        owner = self.owners[0] if self.owners else CLIENT_CMD
        if owner in (EPSV, EPRT) and not final(line):
            self.held.append(line)  # a continuation of a reply that may be refused
            return True
        if not final(line):
            return False
        if self.owners:
            self.owners.popleft()
        held, self.held = self.held, []
        if owner in (EPSV, EPRT):
            self.waiting = False  # decided: a replacement (if any) goes out now
        if owner == EPSV and line[:3] in _REFUSED:
            self.epsv_refused = True
            self._own(PASV, out)
            out.append(Translated64("EPSV", "PASV"))
            return True
        if owner == EPRT and line[:3] in _REFUSED:
            self.eprt_refused = True  # the next EPRT goes as PORT; this one too if its
            if listen is not None and listen == self._eprt:  # listener was not replaced
                numbers = format_port_numbers(listen.host, listen.port)
                self._own(PORT, out, b"PORT %s\r\n" % numbers)
                out.append(Translated64("EPRT", "PORT"))
                return True
        self._ours = owner == PASV  # its 227 becomes a 229 (render)
        out.extend(Send(CLIENT, h) for h in held)
        return False

    def render(self, match: Match, target: Address, shown: Address) -> tuple[str | None, Address]:
        """How an announced line is written: (render, shown address)."""
        if not self.enabled:
            return None, shown
        if match.kind is Kind.PASV:  # from ftpalg's PASV: a 229; the client's own: IPv4 kept
            return (AS_229, shown) if self._ours else (None, target)
        if match.kind is Kind.EPRT and self.eprt_refused:
            return AS_PORT, shown
        return None, shown

    # ---- helpers ------------------------------------------------------------------------

    def _answers_itself(self, line: bytes) -> bool:
        v = verb(line)
        if v == "ALGS":
            return True
        if not self.enabled:
            return False
        return v in _LOCAL or (v == "EPSV" and _argument(line).upper() not in (b"", b"2", b"ALL"))

    def _own(self, kind: str, out: list[Action], line: bytes | None = None) -> None:
        out.append(Send(SERVER, line or f"{kind.upper()}\r\n".encode()))
        self.owners.append(kind)

    def _algs(self, line: bytes, out: list[Action]) -> None:
        arg = _argument(line).upper()
        if arg == b"ENABLE64":
            self.enabled = True
        elif arg == b"DISABLE64":
            self.enabled = False
        elif arg != b"STATUS64":
            out.append(Send(CLIENT, P.reply(501, "ALGS takes STATUS64, ENABLE64 or DISABLE64.")))
            return
        text = "EPSVEPRT FTP ALG enabled." if self.enabled else "NONE FTP ALG disabled."
        out.append(Send(CLIENT, P.reply(216, text)))


def rendered(render: str, shown: Address, port: int) -> bytes:
    """The line ftpalg writes instead of splicing the original one."""
    if render == AS_229:
        return b"229 Entering Extended Passive Mode (%s).\r\n" % format_epsv(port)
    return b"PORT %s\r\n" % replacement(Kind.PORT, shown, port)


def strip_telnet(side: Side, line: bytes, out: list[Action]) -> bytes:
    """`line` without Telnet option negotiation, each refused to its sender (RFC 1123
    4.1.2.12: WILL gets DONT, DO gets WONT). IAC IAC, IP and DM (ABOR's Synch) stay."""
    if IAC not in line:
        return line
    kept, answers, i, removed = bytearray(), bytearray(), 0, False
    while i < len(line):
        byte = line[i]
        if byte == IAC and i + 1 < len(line) and line[i + 1] in (WILL, WONT, DO, DONT):
            if i + 2 < len(line):
                refusal = _REFUSAL.get(line[i + 1])
                if refusal is not None:
                    answers += bytes((IAC, refusal, line[i + 2]))
            i, removed = i + 3, True
            continue
        if byte == IAC and i + 1 < len(line):  # an escaped 255, IP, DM ...: two bytes as they are
            kept += line[i : i + 2]
            i += 2
            continue
        kept.append(byte)
        i += 1
    if answers:
        out.append(Send(side, bytes(answers)))
    if not removed:
        return line
    return bytes(kept) if kept.strip(b"\r\n") else b""  # nothing but negotiation: dropped


def _argument(line: bytes) -> bytes:
    parts = line.rstrip(b"\r\n").split(b" ", 1)
    return parts[1].strip() if len(parts) > 1 else b""
