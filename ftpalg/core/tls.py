"""Explicit FTPS in the control session: the `tls` policy (RFC 2228 AUTH, RFC 4217).

How this works.
- `passthrough`: the client's `AUTH ...` is forwarded. When the server accepts it — its
  final reply `234` — every byte after that reply's line is TLS. From then on the session is
  *opaque*: both directions are passed on byte for byte, never framed, parsed or altered,
  including whatever each side had already sent behind the switch (in order). The data
  connections are then invisible; instead of expectations the session asks for one
  *window* (`OpenWindow`): new connections from this client to the address it knows the
  server by, on unprivileged ports, for the rest of the session — passive FTPS, as the
  kernel helper lets it through. Active mode cannot work blind through NAT (the kernel
  helper cannot either). `CCC` (back to a clear control channel) is not followed: the
  session stays opaque.
- `refuse`: ftpalg answers `AUTH` itself with `534` and never forwards it; the session stays
  readable (networks whose policy requires inspection; a client may then fall back to plain
  FTP, a downgrade the operator chose).
- `terminate` (reverse mode): ftpalg is the TLS server itself; see tls_terminate.py.
A `234` without an `AUTH` from the client before it changes nothing: a server cannot switch
the gateway off. Only `AUTH` makes a 234 meaningful (RFC 2228: 234 answers AUTH; ADAT is 235).
"""

from __future__ import annotations

from ftpalg.core.direction import Direction
from ftpalg.core.messages import Action, Faces, OpenWindow, Send, Side
from ftpalg.core.observations import TlsPassthrough, TlsRefused
from ftpalg.core.tls_terminate import Terminate

TLS_MODES = ("passthrough", "refuse", "terminate")
REFUSED = b"534 Request denied for policy reasons: this gateway does not pass TLS.\r\n"


def is_auth(line: bytes) -> bool:
    return line[:4].upper() == b"AUTH" and line[4:5] in (b" ", b"\r", b"\n", b"")


class TlsControl:
    __slots__ = ("auth", "mode", "opaque", "terminate")

    def __init__(self, mode: str, require_tls: bool = False) -> None:
        self.mode = mode
        self.auth: bytes | None = None  # the AUTH line the client sent (passthrough)
        self.opaque = False
        self.terminate = Terminate(require_tls) if mode == "terminate" else None

    def implicit(self) -> None:
        """Implicit FTPS (terminate): the client's connection was TLS from its first byte."""
        assert self.terminate is not None
        self.terminate.secured = self.terminate.pbsz = True

    def client_line(self, line: bytes, out: list[Action], client: Direction) -> bool:
        """True when ftpalg answered the line itself (AUTH under `refuse`; AUTH, PBSZ, PROT
        and more under `terminate`)."""
        if self.terminate is not None:
            return self.terminate.client_line(line, out, client)
        if not is_auth(line):
            return False
        if self.mode == "refuse":
            out.append(Send(Side.CLIENT, REFUSED))
            out.append(TlsRefused(line))
            return True
        self.auth = line
        return False

    def accepts(self, line: bytes) -> bool:
        """A server line after which the session is TLS: the final 234 answering AUTH."""
        return self.auth is not None and line[:4] == b"234 "

    def go_opaque(self, sides: dict[Side, Direction], faces: Faces, out: list[Action]) -> None:
        """Switch after the 234 was passed on: the window, then what each side had sent
        behind it, raw (the same bytes, in the same order, however the input was cut)."""
        assert self.auth is not None
        self.opaque = True
        out.append(TlsPassthrough(self.auth))
        out.append(OpenWindow(faces.client.host, faces.server_face.host, faces.client_face.host))
        for side, direction in sides.items():
            rest = b"".join(line for _, line in direction.held) + direction.framer.eof()[1]
            direction.held.clear()
            direction.backlog = 0
            direction.partial_since = None
            if rest:
                out.append(Send(side.other, rest))
