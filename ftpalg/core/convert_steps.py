"""The steps of data-mode conversion (core/convert.py tells the whole story and has the
session's hooks; docs/conversion.md): the client leg and the transfer plan, ftpalg's own
command upstream and its answer, the dials, the join, and how a plan ends."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ftpalg.core import policy as P
from ftpalg.core.messages import (
    Action,
    CloseListener,
    DialData,
    Endpoint,
    Faces,
    JoinData,
    OpenListener,
    RejectData,
    Send,
    Side,
)
from ftpalg.core.observations import Converted, DataMode
from ftpalg.core.ports import PortChooser, RandomSource
from ftpalg.core.rewrite import Unrepresentable, format_epsv, replacement
from ftpalg.core.transfer import CommandNotes
from ftpalg.core.wire import Kind, Match, parse_server_line

POLICIES = ("client", "passive", "active", "PASV", "EPSV", "PORT", "EPRT")
PASSIVE = frozenset({"PASV", "EPSV"})
_FALLBACK = {"EPSV": "PASV", "EPRT": "PORT"}
_REFUSED = frozenset({b"500", b"501", b"502", b"522"})
CLIENT, SERVER = Side.CLIENT, Side.SERVER
CLIENT_CMD, OWN, TRANSFER = "client", "own", "transfer"  # who a pending reply belongs to


def verb(line: bytes) -> str:
    """The command word, without Telnet IP/Synch bytes an ABOR may carry."""
    word = line.lstrip(b"\xff\xf4\xf2").split(b" ", 1)[0].rstrip(b"\r\n")
    return word.decode("ascii", "replace").upper()


def final(line: bytes, first: bytes = b"2345") -> bool:
    """The last line of a reply (`ddd `) whose first digit is in `first` (by default any
    that completes a command: not a 1xx)."""
    return len(line) >= 4 and line[3:4] == b" " and line[:3].isdigit() and line[0] in first


def upstream_for(mode: str, kind: str) -> str | None:
    """What goes upstream for the client's `kind` under `mode`; None: no conversion."""
    if mode == "client":
        return None
    if mode == "passive":
        return "EPSV" if kind not in PASSIVE else None
    if mode == "active":
        return "EPRT" if kind in PASSIVE else None
    return mode if kind != mode else None


@dataclass(slots=True)
class ClientLeg:
    kind: str  # what the client sent: PORT, EPRT, PASV, EPSV
    up: str  # what goes upstream for it
    target: Endpoint | None = None  # active client: where ftpalg dials
    listener: int | None = None  # passive client: ftpalg's listener, then ...
    chooser: PortChooser | None = None
    conn: int | None = None  # ... the connection accepted on it


@dataclass(slots=True)
class Plan:
    line: bytes  # the transfer command, held until step 4
    leg: ClientLeg
    up: str  # the upstream kind in use (after fallbacks)
    stage: str = "asked"  # opening, asked, dialing, sent
    listener: int | None = None  # active upstream: ftpalg's listener for the server
    chooser: PortChooser | None = None
    dial: int | None = None  # the dial in progress (server, then client)
    server_conn: int | None = None
    client_conn: int | None = None


class Steps:
    def __init__(
        self,
        faces: Faces,
        policy: P.CorePolicy,
        rng: RandomSource,
        new_id: Callable[[], int],
        notes: CommandNotes,
    ) -> None:
        self.mode = policy.data_policy
        self.faces, self.policy, self.rng, self.new_id, self.notes = (
            faces,
            policy,
            rng,
            new_id,
            notes,
        )
        self.owners: deque[str] = deque([CLIENT_CMD])  # the greeting answers the connect
        self.leg: ClientLeg | None = None
        self.plan: Plan | None = None
        self.opening = False  # the client leg's listener is being bound
        self.refused: set[str] = set()  # EPSV/EPRT the server refused: never asked again
        self.deadline: float | None = None
        self.joined: dict[int, DataMode] = {}  # client conn -> mode, while relayed

    def _effective(self, up: str) -> str:
        return _FALLBACK[up] if up in self.refused else up

    def _own(self, data: bytes, out: list[Action]) -> None:
        out.append(Send(SERVER, data))
        self.owners.append(OWN)

    def _open_client_listener(self, out: list[Action]) -> None:
        leg = self.leg
        assert leg is not None
        leg.listener = self.new_id()
        leg.chooser = self._chooser()
        self.opening = True
        f = self.faces
        out.append(
            OpenListener(
                leg.listener,
                f.server_face.host,
                leg.chooser.first,
                f.client.host,
                f.server,
                f.client_face.host,
            )
        )

    def _chooser(self) -> PortChooser:
        pol = self.policy
        return PortChooser(0, pol.data_ports, self.rng, pol.port_tries, strict=True)

    def _ask(self, out: list[Action]) -> None:
        p = self.plan
        assert p is not None
        if p.up in PASSIVE:
            p.stage = "asked"
            self._own(f"{p.up}\r\n".encode(), out)
            return
        p.stage, p.listener, p.chooser = "opening", self.new_id(), self._chooser()
        f = self.faces
        out.append(
            OpenListener(
                p.listener,
                f.client_face.host,
                p.chooser.first,
                f.server.host,
                f.client,
                f.server_face.host,
            )
        )

    def _opened(self, listener: int, port: int, out: list[Action]) -> bool:
        leg, p = self.leg, self.plan
        if leg is not None and leg.listener == listener and self.opening:
            self.opening = False
            face = self.faces.server_face.host
            if leg.kind == "EPSV":
                text = b"229 Entering Extended Passive Mode (%s).\r\n" % format_epsv(port)
            else:
                shown = next((a for a in self.policy.announce if a.version == 4), face)
                try:
                    numbers = replacement(Kind.PASV, shown, port)
                except Unrepresentable:
                    out.append(Send(CLIENT, P.reply(425, "Use EPSV on this connection.")))
                    self._replace(None, out)
                    return True
                text = b"227 Entering Passive Mode (%s).\r\n" % numbers
            out.append(Send(CLIENT, text))
            return True
        if p is not None and p.listener == listener and p.stage == "opening":
            kind = Kind.EPRT if p.up == "EPRT" else Kind.PORT
            try:
                text = replacement(kind, self.faces.client_face.host, port)
            except Unrepresentable:
                self._fail("PORT cannot name this address", out)
                return True
            p.stage = "asked"
            self._own(b"%s %s\r\n" % (p.up.encode(), text), out)
            return True
        return False

    def _bind_failed(self, listener: int, out: list[Action]) -> bool:
        leg, p = self.leg, self.plan
        if leg is not None and leg.listener == listener and leg.chooser is not None:
            port = leg.chooser.next_port()
            if port is None:
                self.opening = False
                self._replace(None, out)
                out.append(Send(CLIENT, P.NO_PORT_FOR_PASSIVE))
            else:
                f = self.faces
                out.append(
                    OpenListener(
                        listener,
                        f.server_face.host,
                        port,
                        f.client.host,
                        f.server,
                        f.client_face.host,
                    )
                )
            return True
        if p is not None and p.listener == listener and p.chooser is not None:
            port = p.chooser.next_port()
            if port is None:
                p.listener = None
                self._fail("no free data port on the gateway", out)
            else:
                f = self.faces
                out.append(
                    OpenListener(
                        listener,
                        f.client_face.host,
                        port,
                        f.server.host,
                        f.client,
                        f.server_face.host,
                    )
                )
            return True
        return False

    def _answer(self, line: bytes, out: list[Action]) -> None:
        """The final reply to ftpalg's own EPSV/PASV/EPRT/PORT."""
        p = self.plan
        if p is None or p.stage != "asked":
            return  # cancelled (ABOR) meanwhile
        ok = False
        if p.up in PASSIVE:
            m = parse_server_line(line, self.faces.server.host.version == 6)
            want = Kind.EPSV if p.up == "EPSV" else Kind.PASV
            if isinstance(m, Match) and m.kind is want:
                host = P.server_target(m, self.faces.server.host, self.policy)
                p.stage, p.dial = "dialing", self.new_id()
                source = Endpoint(self.faces.client_face.host, 0)
                out.append(DialData(p.dial, Endpoint(host, m.port), source))
                return
        else:
            ok = line.startswith(b"2")
        if ok:
            self._server_ready(out)
        elif line[:3] in _REFUSED and p.up in _FALLBACK and self.mode in ("passive", "active"):
            self.refused.add(p.up)
            if p.listener is not None:
                out.append(CloseListener(p.listener))
                p.listener = None
            p.up = _FALLBACK[p.up]
            self._ask(out)
        else:
            self._fail(f"the server refused {p.up} ({line[:3].decode('ascii', 'replace')})", out)

    def _server_ready(self, out: list[Action]) -> None:
        p = self.plan
        assert p is not None
        if p.leg.target is None:
            self._send_transfer(out)
            return
        p.stage, p.dial = "dialing", self.new_id()
        out.append(DialData(p.dial, p.leg.target, Endpoint(self.faces.server_face.host, 0)))

    def _send_transfer(self, out: list[Action]) -> None:
        p = self.plan
        assert p is not None
        p.stage = "sent"
        self.notes.client_line(p.line)
        out.append(Send(SERVER, p.line))
        self.owners.append(TRANSFER)
        out.append(Converted(verb(p.line), p.leg.kind, p.up))
        self._join(out)

    def _join(self, out: list[Action]) -> None:
        p = self.plan
        if p is None or p.stage != "sent" or p.server_conn is None:
            return
        client = p.client_conn if p.leg.target is not None else p.leg.conn
        if client is None:
            return
        mode = DataMode.ACTIVE if p.leg.target is not None else DataMode.PASSIVE
        self.notes.accepted(client)
        self.joined[client] = mode
        out.append(JoinData(client, p.server_conn))
        self.plan, self.deadline = None, (None if self.leg is None else self.deadline)

    def _fail(self, why: str, out: list[Action]) -> None:
        out.append(Send(CLIENT, P.reply(425, f"Can't open data connection: {why}.")))
        self._drop(out)

    def _drop(self, out: list[Action]) -> None:
        """Close whatever the plan holds; it is over."""
        p, self.plan = self.plan, None
        if p is None:
            return
        self._close_leg(p.leg, out)
        if p.listener is not None:
            out.append(CloseListener(p.listener))
        for conn in (p.server_conn, p.client_conn):
            if conn is not None:
                out.append(RejectData(conn))

    def _replace(self, leg: ClientLeg | None, out: list[Action]) -> None:
        if self.leg is not None:
            self._close_leg(self.leg, out)
        self.leg = leg
        if leg is not None:
            self.notes.announced()

    def _close_leg(self, leg: ClientLeg, out: list[Action]) -> None:
        if leg.listener is not None:
            out.append(CloseListener(leg.listener))
            leg.listener = None
        if leg.conn is not None:
            out.append(RejectData(leg.conn))
            leg.conn = None
