"""The data-connection half of a control session: accept, dial, finish (SPEC §5).

How this works. A connection accepted on the live expectation's listener is checked against
the expected peer (any other address is closed at once and logged: theft; the expectation
stays). The right peer consumes the expectation (single use), and the session asks the
adapter to dial the far end from the face the receiver expects; active data keeps the
server's source port (usually 20), as the kernel NAT does. Until that dial succeeds
(`DataConnected`) or fails (`DataFinished`), control lines from the side that connected wait,
so a `226` cannot overtake its data connection. `Session` mixes this in.
"""

from __future__ import annotations

from ftpalg.core.expect import DataConnection, Expectation
from ftpalg.core.messages import (
    Action,
    CloseListener,
    ConnectData,
    DataAccepted,
    DataFinished,
    Endpoint,
    Log,
    RejectData,
    Side,
)
from ftpalg.core.transfer import CommandNotes

CLIENT, SERVER = Side.CLIENT, Side.SERVER


class DataPath:
    expectation: Expectation | None
    closed: bool
    notes: CommandNotes
    _data: dict[int, DataConnection]
    _dialing: dict[int, Side]  # conn -> the side whose lines wait for the dial
    _last_activity: float

    def _drain(self, side: Side, now: float, out: list[Action]) -> None:
        raise NotImplementedError  # provided by Session

    def _on_data_accepted(self, ev: DataAccepted, now: float, out: list[Action]) -> None:
        exp = self.expectation
        if self.closed or exp is None or exp.listener != ev.listener:
            out.append(RejectData(ev.conn))
            out.append(Log("data_rejected", "warning", {"peer": str(ev.peer), "reason": "stale"}))
            return
        if ev.peer.host != exp.accept_from:
            out.append(RejectData(ev.conn))
            out.append(
                Log("data_theft_refused", "warning", {
                    "peer": str(ev.peer), "expected": str(exp.accept_from),
                    "listen": str(exp.listen),
                })
            )  # fmt: skip
            return
        self.expectation = None
        out.append(CloseListener(exp.listener))
        source_port = ev.peer.port if exp.kind.from_client else 0  # active data keeps port 20
        self._data[ev.conn] = DataConnection(exp.kind)
        self.notes.accepted(ev.conn)
        self._dialing[ev.conn] = SERVER if exp.kind.from_client else CLIENT
        out.append(ConnectData(ev.conn, exp.target, Endpoint(exp.dial_from, source_port)))
        out.append(
            Log("data_accepted", "info", {
                "conn": ev.conn, "peer": str(ev.peer), "target": str(exp.target),
                "mode": "active" if exp.kind.from_client else "passive",
            })
        )  # fmt: skip

    def _release_dial(self, conn: int, now: float, out: list[Action]) -> None:
        side = self._dialing.pop(conn, None)
        if side is not None:
            self._drain(side, now, out)

    def _on_data_finished(self, ev: DataFinished, now: float, out: list[Action]) -> None:
        conn = self._data.pop(ev.conn, None)
        if conn is None:
            return
        self._last_activity = now
        to_client, to_server = ev.accepted_to_dialed, ev.dialed_to_accepted
        if not conn.active:
            to_client, to_server = to_server, to_client
        out.append(
            Log("data_finished", "info" if ev.error is None else "warning", {
                "conn": ev.conn, "mode": "active" if conn.active else "passive",
                "bytes_to_client": to_client, "bytes_to_server": to_server,
                "seconds": round(ev.seconds, 6), "result": ev.error or "ok",
                **self.notes.finished(ev.conn),
            })
        )  # fmt: skip
