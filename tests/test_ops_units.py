"""Pure units of the operations layer: xferlog lines, events -> metrics, the logger tap."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from ftpalg.ops.logs import configure, get_logger
from ftpalg.ops.metrics import Metrics
from ftpalg.ops.operations import TappedLogger
from ftpalg.ops.xferlog import XferLog, format_line

FINISHED = {"client": "[2001:db8::7]:40001", "bytes_to_client": 0, "bytes_to_server": 77,
            "seconds": 2.6, "result": "reset", "user": b"anonymous", "command": "APPE",
            "path": b"in\x1bcoming/a b.txt", "type": "A"}  # fmt: skip


def test_xferlog_line() -> None:
    now = time.mktime((2024, 3, 4, 8, 12, 30, 0, 0, -1))
    line = format_line(FINISHED, now)
    assert line == ("Mon Mar  4 08:12:30 2024 3 2001:db8::7 77 in_coming/a_b.txt a _ i a "
                    "anonymous ftp 0 * i")  # fmt: skip
    listing = {"command": "NLST", "path": b"", "user": None, "bytes_to_client": 5,
               "result": "ok", "type": "I"}  # fmt: skip
    assert format_line(FINISHED | listing, now).split()[5:] == [
        "3", "2001:db8::7", "5", ".", "b", "_", "o", "r", "*", "ftp", "0", "*", "c"]  # fmt: skip


def test_xferlog_reports_an_unopenable_path_and_keeps_the_old_file(tmp_path: Path) -> None:
    reports: list[tuple[str, str]] = []
    xl = XferLog(str(tmp_path / "x.log"), lambda event, error: reports.append((event, error)))
    xl.open()
    xl.reopen(str(tmp_path / "missing" / "y.log"))
    assert reports and reports[0][0] == "xferlog_open_failed"
    xl.observe("data_finished", FINISHED)
    unused = {"command": None, "bytes_to_client": 0, "bytes_to_server": 0}
    xl.observe("data_finished", FINISHED | unused)  # no transfer: no line
    xl.close()
    assert (tmp_path / "x.log").read_text().count("\n") == 1


def sample(m: Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_metrics_from_events() -> None:
    m = Metrics("transparent")
    m.observe("session_opened", {"mode": "transparent", "connect_ms": 1.5})
    m.observe("rewrite", {"kind": "229", "seq_offset": -3})
    m.observe("rewrite", {"kind": "EPRT", "seq_offset": 4})
    m.observe("expectation_replaced", {})
    m.observe("data_accepted", {"mode": "passive"})
    m.observe("data_finished", FINISHED)
    m.observe(
        "session_refused", {"reason": "421 Too many sessions on the gateway, try again later."}
    )
    m.observe("session_refused", {"reason": "out of file descriptors"})
    m.observe("session_closed", {"reason": "x", "expectation_dropped": False})
    assert sample(m, "ftpalg_sessions_total", mode="transparent") == 1
    assert sample(m, "ftpalg_sessions_active", mode="transparent") == 0
    assert sample(m, "ftpalg_expectations_pending") == 0
    assert sample(m, "ftpalg_expectations_total", outcome="replaced") == 1
    assert sample(m, "ftpalg_relay_errors_total") == 1
    assert sample(m, "ftpalg_refusals_total", reason="limits") == 2
    assert sample(m, "ftpalg_seq_offset_bytes_sum") == 7
    assert sample(m, "ftpalg_upstream_connect_seconds_sum") == 0.0015
    assert b'ftpalg_data_bytes_total{direction="to_server"} 77.0' in m.exposition()


def test_tap_sees_every_event_with_context_whatever_the_level() -> None:
    out = io.StringIO()
    configure("json", "error", out)
    seen: list[tuple[str, dict[str, Any]]] = []

    def broken(event: str, fields: dict[str, Any]) -> None:
        raise KeyError("boom")

    log = TappedLogger(get_logger(), [lambda e, f: seen.append((e, f)), broken])
    log.bind(session="1").info("rewrite", kind="PORT")
    log.bind(session="2").warning("data_rejected", peer="x")
    assert seen == [("rewrite", {"session": "1", "kind": "PORT"}),
                    ("data_rejected", {"session": "2", "peer": "x"})]  # fmt: skip
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["observer_failed"]  # once; info lines filtered
    configure("json", "info")  # back to the default for later tests
