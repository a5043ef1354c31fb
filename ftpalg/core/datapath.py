"""The data connections of a control session: accept, dial, finish (docs/core.md).

How this works. A connection accepted on the live expectation's listener is checked against
the expected peer (any other address is closed at once and logged: theft; the expectation
stays). The right peer consumes the expectation (single use), and the session asks the
adapter to dial the far end from the face the receiver expects; active data keeps the
server's source port (usually 20), as the kernel NAT does. Until that dial succeeds
(`DataConnected`) or fails (`DataFinished`), control lines from the side that connected wait,
so a `226` cannot overtake its data connection: `waiting(side)` tells the session, and
`dial_done()` names the side to drain again. `Session` owns one `DataLegs`.
"""

from __future__ import annotations

from ftpalg.core.expect import Expectation
from ftpalg.core.messages import (
    Action,
    CloseListener,
    ConnectData,
    DataAccepted,
    DataFinished,
    Endpoint,
    RejectData,
    Side,
)
from ftpalg.core.observations import (
    DataEnded,
    DataMode,
    DataRejected,
    DataStarted,
    ExpectationEnded,
    ExpectationOutcome,
    Refusal,
)
from ftpalg.core.transfer import CommandNotes

CLIENT, SERVER = Side.CLIENT, Side.SERVER


class DataLegs:
    def __init__(self, notes: CommandNotes, client: Endpoint) -> None:
        self.notes = notes
        self.client = client
        self._modes: dict[int, DataMode] = {}  # conn -> mode, while the connection lives
        self._dialing: dict[int, Side] = {}  # conn -> the side whose lines wait for the dial

    @property
    def active(self) -> bool:
        """Any data connection dialing or relaying (the idle timeout waits for them)."""
        return bool(self._modes)

    def waiting(self, side: Side) -> bool:
        return side in self._dialing.values()

    def accept(
        self, ev: DataAccepted, exp: Expectation | None, closed: bool, out: list[Action]
    ) -> bool:
        """Check an accepted connection; True when it consumed `exp`."""
        if closed or exp is None or exp.listener != ev.listener:
            out.append(RejectData(ev.conn))
            out.append(DataRejected(Refusal.STALE, ev.peer))
            return False
        if ev.peer.host != exp.accept_from:
            out.append(RejectData(ev.conn))
            theft = DataRejected(Refusal.THEFT, ev.peer, str(exp.accept_from), str(exp.listen))
            out.append(theft)
            return False
        mode = DataMode.of(exp.kind)
        active = mode is DataMode.ACTIVE
        out.append(CloseListener(exp.listener))
        out.append(ExpectationEnded(ExpectationOutcome.USED, exp.listen))
        source_port = ev.peer.port if active else 0  # active data keeps port 20
        self._modes[ev.conn] = mode
        self.notes.accepted(ev.conn)
        self._dialing[ev.conn] = SERVER if active else CLIENT
        out.append(ConnectData(ev.conn, exp.target, Endpoint(exp.dial_from, source_port)))
        out.append(DataStarted(ev.conn, ev.peer, exp.target, mode))
        return True

    def dial_done(self, conn: int) -> Side | None:
        """The dial for `conn` ended: the side whose lines may flow again, if any."""
        return self._dialing.pop(conn, None)

    def finish(self, ev: DataFinished, now: float, out: list[Action]) -> bool:
        """Report a finished connection (once its transfer's final reply is known, see
        transfer.py); False when it was not ours (already finished)."""
        mode = self._modes.pop(ev.conn, None)
        if mode is None:
            return False
        to_client, to_server = ev.accepted_to_dialed, ev.dialed_to_accepted
        if mode is DataMode.PASSIVE:  # accepted from the client, dialed the server
            to_client, to_server = to_server, to_client
        t = self.notes.finished(ev.conn)
        self.notes.report(
            DataEnded(
                ev.conn,
                mode,
                to_client,
                to_server,
                round(ev.seconds, 6),
                ev.error or "ok",
                self.notes.user,
                t.command,
                t.path,
                t.type,
                self.client,
                estimated=ev.estimated,
            ),
            t,
            now,
            out,
        )
        return True
