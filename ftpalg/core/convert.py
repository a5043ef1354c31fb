"""Data-mode conversion (issue 14, docs/conversion.md): active<->passive, extended<->classic.

How this works. Under a converting `data_policy` ftpalg answers the client's PORT/EPRT (200)
or PASV/EPSV (227/229 naming a listener of its own on the face the client knows the server
by, port from the data-port range) itself: that is the *client leg*, one per session, a
newer one replacing the older. The transfer command (RETR, STOR, ...) after it is held while:
1. ftpalg sends its own command upstream (EPSV/PASV, or EPRT/PORT naming a listener on the
   face the server sees the client as); EPSV/EPRT refused with 500/501/502/522 falls back to
   PASV/PORT under `passive`/`active` (remembered for the session);
2. passive upstream: ftpalg dials the data port the server named;
3. active client: ftpalg dials the client (so its 150 never comes before the connection);
4. the transfer command goes upstream; both connections are joined as soon as both exist
   (the server's connection in active upstream, the client's in passive client).
Replies to ftpalg's own commands are never passed on: the session's replies are matched to
commands in order (`owners`), and a converted command is only handled when no reply is
outstanding, so the client's replies keep their order. A final 2xx to the transfer waits
until the join (a 226 never overtakes its data). Failures are replies: a refusal or a failed
dial answers the transfer with 425 and leaves nothing open; ABOR before the transfer went
upstream answers it with 426 and the ABOR goes on.
"""

from __future__ import annotations

from ftpalg.core import policy as P
from ftpalg.core.convert_steps import (
    CLIENT,
    CLIENT_CMD,
    OWN,
    PASSIVE,
    POLICIES,
    SERVER,
    TRANSFER,
    ClientLeg,
    Plan,
    Steps,
    final,
    upstream_for,
    verb,
)
from ftpalg.core.direction import Direction
from ftpalg.core.messages import (
    Action,
    CloseListener,
    DataAccepted,
    DataDialed,
    DataFinished,
    DialFailed,
    Endpoint,
    Event,
    ListenerFailed,
    ListenerOpened,
    RejectData,
    Send,
    Side,
)
from ftpalg.core.observations import DataEnded, DataRejected, Refusal
from ftpalg.core.transfer import TRANSFER_VERBS
from ftpalg.core.wire import Match, parse_client_line

__all__ = ["POLICIES", "Converter", "upstream_for", "verb"]


class Converter(Steps):
    @property
    def active(self) -> bool:
        return bool(self.joined) or self.plan is not None

    # ---- the session's hooks --------------------------------------------------------------

    def relevant(self, line: bytes) -> bool:
        v = verb(line)
        if v in ("PORT", "EPRT", "PASV", "EPSV"):
            return upstream_for(self.mode, v) is not None
        return v in TRANSFER_VERBS and self.leg is not None

    def blocks(self, side: Side, direction: Direction) -> bool:
        if side is SERVER:  # a final 2xx to the transfer waits for the join
            p = self.plan
            if p is None or p.stage != "sent" or not direction.held:
                return False
            line = direction.held[0][1]
            return bool(self.owners) and self.owners[0] == TRANSFER and final(line, b"2")
        if self.opening or (self.plan is not None and self.plan.stage != "sent"):
            return True
        return bool(self.owners) and bool(direction.held) and self.relevant(direction.held[0][1])

    def check_abort(self, direction: Direction, out: list[Action]) -> None:
        """ABOR before the transfer went upstream: the transfer gets 426, the ABOR goes on."""
        p = self.plan
        if p is None or p.stage == "sent" or not direction.held:
            return
        if verb(direction.held[0][1]) == "ABOR":
            out.append(Send(CLIENT, P.reply(426, "Connection closed; transfer aborted.")))
            self._drop(out)

    def sent(self, out: list[Action], mark: int) -> None:
        """Note the client commands the session passed upstream since `mark`."""
        for action in out[mark:]:
            if isinstance(action, Send) and action.side is SERVER:
                self.owners.append(CLIENT_CMD)

    def client_line(self, line: bytes, out: list[Action], now: float) -> bool:
        """True when the line was taken by the conversion (answered or held)."""
        v = verb(line)
        if v in TRANSFER_VERBS and self.leg is not None:
            leg, self.leg = self.leg, None
            self.plan = Plan(line, leg, self._effective(leg.up))
            self.deadline = now + self.policy.expect_timeout
            self._ask(out)
            return True
        up = upstream_for(self.mode, v) if v in ("PORT", "EPRT", "PASV", "EPSV") else None
        if up is None:
            return False
        self.deadline = now + self.policy.expect_timeout  # a leg expires like an expectation
        if v in PASSIVE:
            self._replace(ClientLeg(v, up), out)
            self._open_client_listener(out)
            return True
        match = parse_client_line(line, self.faces.client.host.version == 6)
        if not isinstance(match, Match) or P.refusal_for_client(
            match, self.faces.client.host, self.policy
        ):
            return False  # the session refuses it as it always does
        assert match.address is not None
        self._replace(ClientLeg(v, up, target=Endpoint(match.address, match.port)), out)
        out.append(Send(CLIENT, P.reply(200, f"{v} command successful.")))
        return True

    def server_line(self, line: bytes, out: list[Action]) -> bool:
        """Count replies; True when the line answers ftpalg's own command (not passed on)."""
        owner = self.owners[0] if self.owners else CLIENT_CMD
        done = final(line)
        if done and self.owners:
            self.owners.popleft()
        if owner == OWN:
            if done:
                self._answer(line, out)
            return True
        if owner == TRANSFER and done and not line.startswith(b"2"):
            p = self.plan
            if p is not None and p.stage == "sent":  # 425/550...: nothing comes
                self._drop(out)
        return False

    def handle(self, event: Event, now: float, out: list[Action]) -> bool:
        """True when `event` was about one of the conversion's listeners or connections."""
        p = self.plan
        match event:
            case ListenerOpened(listener, port):
                return self._opened(listener, port, out)
            case ListenerFailed(listener):
                return self._bind_failed(listener, out)
            case DataAccepted(listener, conn, peer):
                leg = p.leg if p is not None and p.leg.listener == listener else self.leg
                if leg is not None and leg.listener == listener:
                    if peer.host != self.faces.client.host or leg.conn is not None:
                        out.append(RejectData(conn))
                        out.append(DataRejected(Refusal.THEFT, peer, str(self.faces.client.host)))
                        return True
                    leg.conn, leg.listener = conn, None
                    out.append(CloseListener(listener))
                elif p is not None and p.listener == listener:
                    if peer.host != self.faces.server.host:
                        out.append(RejectData(conn))
                        out.append(DataRejected(Refusal.THEFT, peer, str(self.faces.server.host)))
                        return True
                    p.server_conn, p.listener = conn, None
                    out.append(CloseListener(listener))
                else:
                    return False
                self._join(out)
                return True
            case DataDialed(dial, conn):
                if p is None or p.dial != dial:
                    out.append(RejectData(conn))  # cancelled meanwhile
                    return True
                p.dial = None
                if p.server_conn is None:
                    p.server_conn = conn
                    self._server_ready(out)
                else:
                    p.client_conn = conn
                    self._send_transfer(out)
                return True
            case DialFailed(dial, error):
                if p is not None and p.dial == dial:
                    self._fail(f"connect failed ({error})", out)
                return True
            case DataFinished(conn, client_to_server, server_to_client, seconds, error):
                mode = self.joined.pop(conn, None)
                if mode is None:
                    return False
                t, n = self.notes.finished(conn), self.notes
                n.report(
                    DataEnded(
                        conn,
                        mode,
                        server_to_client,
                        client_to_server,
                        round(seconds, 6),
                        error or "ok",
                        n.user,
                        t.command,
                        t.path,
                        t.type,
                        self.faces.client,
                    ),
                    t,
                    now,
                    out,
                )
                return True
        return False

    def on_timer(self, now: float, out: list[Action]) -> None:
        if self.deadline is None or now < self.deadline:
            return
        self.deadline = None
        if self.plan is not None and self.plan.stage != "sent":
            self._fail("timed out", out)
        else:
            self._drop(out)
            self._replace(None, out)

    def close(self, out: list[Action]) -> None:
        self._drop(out)
        self._replace(None, out)
