"""Pure units of the operations layer: xferlog lines, observations -> metrics, the observer."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

from ftpalg.core.messages import Endpoint, Side
from ftpalg.core.observations import (
    Converted,
    DataEnded,
    DataMode,
    DataRejected,
    DataStarted,
    ExpectationEnded,
    ExpectationOutcome,
    LoginFailed,
    Observation,
    ProtocolViolation,
    Refusal,
    Rewritten,
    SessionClosed,
    TlsPassthrough,
    TlsRefused,
    TlsTerminated,
)
from ftpalg.core.policy import OUT_OF_RESOURCES, TOO_MANY_SESSIONS
from ftpalg.core.transfer import settled
from ftpalg.core.wire import Kind
from ftpalg.ops.events import Failed, Fault, KernelState, SessionOpened, SessionRefused
from ftpalg.ops.logs import configure, get_logger
from ftpalg.ops.metrics import Metrics
from ftpalg.ops.observer import Observer
from ftpalg.ops.xferlog import XferLog, format_line

CLIENT_EP = Endpoint(ip_address("2001:db8::7"), 40001)
SERVER_EP = Endpoint(ip_address("2001:db8::21"), 21)
FINISHED = DataEnded(
    conn=1,
    mode=DataMode.ACTIVE,
    bytes_to_client=0,
    bytes_to_server=77,
    seconds=2.6,
    result="reset",
    user=b"anonymous",
    command="APPE",
    path=b"in\x1bcoming/a b.txt",
    type="A",
    client=CLIENT_EP,
)


def test_xferlog_line() -> None:
    now = time.mktime((2024, 3, 4, 8, 12, 30, 0, 0, -1))
    line = format_line(FINISHED, now)
    assert line == (
        "Mon Mar  4 08:12:30 2024 3 2001:db8::7 77 in_coming/a_b.txt a _ i a anonymous ftp 0 * i"
    )
    listing = DataEnded(1, DataMode.PASSIVE, 5, 0, 2.6, "ok", None, "NLST", b"", "I", CLIENT_EP)
    assert format_line(listing, now).split()[5:] == [
        "3",
        "2001:db8::7",
        "5",
        ".",
        "b",
        "_",
        "o",
        "r",
        "*",
        "ftp",
        "0",
        "*",
        "c",
    ]


def test_xferlog_reports_an_unopenable_path_and_keeps_the_old_file(tmp_path: Path) -> None:
    reports: list[Failed] = []
    xl = XferLog(str(tmp_path / "x.log"), reports.append)
    xl.open()
    xl.reopen(str(tmp_path / "missing" / "y.log"))
    assert [r.what for r in reports] == [Fault.XFERLOG_OPEN]
    xl.observe(FINISHED)
    unused = DataEnded(2, DataMode.PASSIVE, 0, 0, 0.1, "ok", None, None, None, "A", CLIENT_EP)
    xl.observe(unused)  # no transfer command, no byte: not a transfer, no line
    xl.observe(SessionClosed("x"))  # not a data connection: no line
    xl.close()
    lines = (tmp_path / "x.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("anonymous ftp 0 * i")


def sample(m: Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_metrics_from_observations() -> None:
    m = Metrics("transparent")
    listen = Endpoint(ip_address("192.0.2.1"), 40000)
    observations: list[Observation] = [
        SessionOpened(SERVER_EP, SERVER_EP, CLIENT_EP, "transparent", 1.5),
        Rewritten(Kind.EPSV, b"229 (|||1|)\r\n", b"229 (|||2|)\r\n", listen, SERVER_EP, 0, -3),
        Rewritten(Kind.EPRT, b"EPRT x\r\n", b"EPRT yz\r\n", listen, CLIENT_EP, 1, 4),
        ExpectationEnded(ExpectationOutcome.REPLACED, listen),
        ExpectationEnded(ExpectationOutcome.USED, listen),
        DataStarted(1, CLIENT_EP, SERVER_EP, DataMode.PASSIVE),
        FINISHED,
        SessionRefused(Refusal.LIMITS, TOO_MANY_SESSIONS, CLIENT_EP),
        SessionRefused(Refusal.LIMITS, OUT_OF_RESOURCES, None, "out of file descriptors"),
        DataRejected(Refusal.THEFT, CLIENT_EP, "192.0.2.9", str(listen)),
        ProtocolViolation(Side.SERVER, "NUL byte in command line"),
        Failed(Fault.ACCEPT_PAUSED, "EMFILE"),
        SessionClosed("x"),
    ]
    for obs in observations:
        m.observe(obs)
    assert sample(m, "ftpalg_sessions_total", mode="transparent") == 1
    assert sample(m, "ftpalg_sessions_active", mode="transparent") == 0
    assert sample(m, "ftpalg_expectations_pending") == 0
    assert sample(m, "ftpalg_expectations_total", outcome="replaced") == 1
    assert sample(m, "ftpalg_expectations_total", outcome="used") == 1
    assert sample(m, "ftpalg_data_connections_total", mode="passive") == 1
    assert sample(m, "ftpalg_data_connections_active") == 0
    assert sample(m, "ftpalg_relay_errors_total") == 1
    assert sample(m, "ftpalg_refusals_total", reason="limits") == 2
    assert sample(m, "ftpalg_refusals_total", reason="theft") == 1
    assert sample(m, "ftpalg_protocol_violations_total", side="server") == 1
    assert sample(m, "ftpalg_errors_total", what="accept") == 1
    assert sample(m, "ftpalg_seq_offset_bytes_sum") == 7
    assert sample(m, "ftpalg_upstream_connect_seconds_sum") == 0.0015
    assert b'ftpalg_data_bytes_total{direction="to_server"} 77.0' in m.exposition()
    assert sample(m, "ftpalg_nat64_sessions_total", mode="transparent") == 0


def test_metrics_count_nat64_sessions_by_mode() -> None:
    m = Metrics("transparent")
    for mode, nat64 in (("transparent", True), ("reverse", True), ("transparent", False)):
        m.observe(SessionOpened(SERVER_EP, SERVER_EP, CLIENT_EP, mode, 1.0, nat64))
    assert sample(m, "ftpalg_nat64_sessions_total", mode="transparent") == 1
    assert sample(m, "ftpalg_nat64_sessions_total", mode="reverse") == 1
    assert sample(m, "ftpalg_sessions_total", mode="transparent") == 2


def test_an_unchanged_announcement_is_no_rewrite() -> None:
    """A transparent-mode 229 (or a 227 naming the server's own address) arms an
    expectation but is not rewritten: logged as announce_unchanged, not counted."""
    m = Metrics("transparent")
    listen = Endpoint(ip_address("192.0.2.1"), 40000)
    same = Rewritten(
        Kind.EPSV, b"229 (|||40000|)\r\n", b"229 (|||40000|)\r\n", listen, listen, 0, 0
    )
    m.observe(same)
    assert same.event == "announce_unchanged"
    assert sample(m, "ftpalg_rewrites_total", kind="229") == 0
    assert sample(m, "ftpalg_expectations_pending") == 1


def test_metrics_count_conversions_by_kind() -> None:
    m = Metrics("transparent")
    for _ in range(2):
        m.observe(Converted("RETR", "PORT", "EPSV"))
    m.observe(Converted("STOR", "EPSV", "PORT"))
    assert sample(m, "ftpalg_conversions_total", client_kind="PORT", upstream_kind="EPSV") == 2
    assert sample(m, "ftpalg_conversions_total", client_kind="EPSV", upstream_kind="PORT") == 1


def test_metrics_of_tls_and_kernel_state() -> None:
    m = Metrics("transparent")
    for obs in (
        TlsPassthrough(b"AUTH TLS\r\n"),
        TlsPassthrough(b"AUTH SSL\r\n"),
        TlsRefused(b"AUTH TLS\r\n"),
        TlsTerminated(b"AUTH TLS\r\n"),
        KernelState(present=True),
    ):
        m.observe(obs)
    assert sample(m, "ftpalg_tls_sessions_total", outcome="passthrough") == 2
    assert sample(m, "ftpalg_tls_sessions_total", outcome="refused") == 1
    assert sample(m, "ftpalg_tls_sessions_total", outcome="terminated") == 1
    assert sample(m, "ftpalg_kernel_rules_present") == 1
    m.observe(KernelState(present=False))
    assert sample(m, "ftpalg_kernel_rules_present") == 0
    m.observe(KernelState(present=True, restored=True, pinholes=2))
    assert sample(m, "ftpalg_kernel_rules_present") == 1
    assert sample(m, "ftpalg_kernel_rules_restored_total") == 1
    events = [o.event for o in (KernelState(True), KernelState(False), KernelState(True, True))]
    assert events == ["kernel_state_installed", "kernel_state_missing", "kernel_state_restored"]


def test_observer_feeds_every_sink_whatever_the_level_and_survives_a_broken_one() -> None:
    out = io.StringIO()
    configure("json", "error", out)
    seen: list[Observation] = []

    def broken(obs: Observation) -> None:
        raise KeyError("boom")

    observe = Observer(get_logger(), [seen.append, broken])
    listen = Endpoint(ip_address("192.0.2.1"), 40000)
    first = ExpectationEnded(ExpectationOutcome.EXPIRED, listen)
    second = DataRejected(Refusal.STALE, CLIENT_EP)
    observe.bind(session="1")(first)
    observe.bind(session="2")(second)
    failed = [o for o in seen if isinstance(o, Failed)]
    assert seen == [first, failed[0], second] and failed[0].what is Fault.OBSERVER
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["observer_failed"]  # once; lower levels filtered
    assert lines[0]["session"] == "1" and "KeyError" in lines[0]["error"]
    configure("json", "info")  # back to the default for later tests


def test_observer_renders_fields_only_for_lines_written() -> None:
    """A bound session logger knows its level: an observation below it reaches every sink
    but its fields() are never computed; at or above it the line is written as before."""
    out = io.StringIO()
    configure("json", "info", out)
    rendered: list[str] = []

    class Counted(ExpectationEnded):
        __slots__ = ()

        def fields(self) -> dict[str, object]:
            rendered.append(self.event)
            return super().fields()

    seen: list[Observation] = []
    observe = Observer(get_logger(), [seen.append]).bind(session="1")
    listen = Endpoint(ip_address("192.0.2.1"), 40000)
    quiet = Counted(ExpectationOutcome.USED, listen)  # debug
    loud = Counted(ExpectationOutcome.EXPIRED, listen)  # info
    observe(quiet)
    observe(loud)
    assert seen == [quiet, loud] and rendered == ["expectation_expired"]
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["event"] == "expectation_expired" and line["listen"] == "192.0.2.1:40000"
    configure("json", "info")


def test_log_rendering_of_observations() -> None:
    refused = SessionRefused(Refusal.LIMITS, TOO_MANY_SESSIONS, CLIENT_EP)
    assert (refused.event, refused.level) == ("session_refused", "warning")
    assert refused.fields() == {
        "reason": "421 Too many sessions on the gateway, try again later.",
        "client": "[2001:db8::7]:40001",
    }
    assert FINISHED.event == "data_finished" and FINISHED.level == "warning"
    assert "client" not in FINISHED.fields() and FINISHED.fields()["mode"] == "active"
    theft = DataRejected(Refusal.THEFT, CLIENT_EP, "192.0.2.9", "192.0.2.1:40000")
    assert theft.event == "data_theft_refused"
    assert DataRejected(Refusal.STALE, CLIENT_EP).event == "data_rejected"
    used = ExpectationEnded(ExpectationOutcome.USED, CLIENT_EP)
    assert (used.event, used.level) == ("expectation_used", "debug")


def test_failed_logins_and_failed_replies_are_counted_and_logged() -> None:
    """login_failed moves its counter; a data connection whose transfer got a non-2xx final
    reply counts as an error and is incomplete (`i`) in the xferlog."""
    m = Metrics("transparent")
    failed = LoginFailed("PASS", b"bob", b"530 Login incorrect.")
    assert (failed.event, failed.level) == ("login_failed", "info")
    assert failed.fields() == {"command": "PASS", "user": b"bob", "reply": b"530 Login incorrect."}
    m.observe(failed)
    m.observe(DataStarted(1, CLIENT_EP, SERVER_EP, DataMode.PASSIVE))
    gone = settled(replace(FINISHED, result="ok"), b"550 No such file.")
    assert (gone.result, gone.reply, gone.ok, gone.level) == (
        "550 No such file.",
        b"550 No such file.",
        False,
        "warning",
    )
    assert format_line(gone, 0.0).endswith(" i")
    complete = settled(replace(FINISHED, result="ok"), b"226 Done")
    assert complete.ok and complete.fields()["reply"] == b"226 Done"
    assert format_line(complete, 0.0).endswith(" c")
    m.observe(gone)
    text = m.exposition().decode()
    assert "ftpalg_login_failures_total 1.0" in text
    assert "ftpalg_relay_errors_total 1.0" in text


def test_observer_says_whether_debug_lines_are_written() -> None:
    """Asked once per session (the command/reply trace); an unknown logger: no trace."""
    configure("json", "debug", io.StringIO())
    assert Observer(get_logger()).bind(session="1").debug
    configure("json", "info")
    assert not Observer(get_logger()).bind(session="1").debug
    assert not Observer(object()).debug
