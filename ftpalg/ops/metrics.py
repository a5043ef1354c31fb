"""Prometheus metrics, derived from ftpalg's log events, served on ``--metrics ADDR:PORT``.

How this works. Every log event of the daemon — the core's `Log` actions carried out by
`ControlSession.dispatch` and the gateway's own lines — passes through one tapped logger
(``ftpalg.ops.operations.TappedLogger``), which hands ``(event, fields)`` to
`Metrics.observe` whatever the log level. Gauges that count things alive (sessions,
expectations, data connections) go up on the event that creates the thing and down on the
one that ends it.

The seq ledger is shown as ``ftpalg_seq_offset_bytes``: a histogram of the absolute
cumulative offset |seq_offset| of the rewritten direction after each rewrite — the
correction the kernel's nf_nat would carry in that TCP stream from then on.

The endpoint is a small asyncio HTTP/1.1 handler on a socket bound before privileges are
dropped (it runs on uvloop and on the stdlib loop alike, no thread): ``GET /metrics``.
Metrics live in their own ``CollectorRegistry`` (plus the process collector), so tests and
several gateways in one process do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from ftpalg.core import policy as P

MODES = ("transparent", "reverse")
KINDS = ("PORT", "EPRT", "227", "229")
REASONS = ("bounce", "low_port", "malformed", "mismatch", "theft", "limits", "no_data_port",
           "stale", "unrepresentable", "no_upstream", "upstream")  # fmt: skip
DIRECTIONS = ("to_client", "to_server")
_LIMITS = {r.decode().strip() for r in (P.TOO_MANY_SESSIONS, P.SHUTTING_DOWN, P.OUT_OF_RESOURCES)}
_LIMITS.add("out of file descriptors")
_SIMPLE_REFUSALS = {
    "malformed_command_refused": "malformed", "reply_address_mismatch": "mismatch",
    "data_theft_refused": "theft", "data_rejected": "stale", "no_data_port": "no_data_port",
    "rewrite_impossible": "unrepresentable", "unterminated_address_line_dropped": "malformed",
}  # fmt: skip
_ERRORS = {"internal_error": "internal", "accept_failed": "accept", "accept_paused": "accept",
           "data_accept_failed": "data_accept", "observer_failed": "observer",
           "xferlog_open_failed": "xferlog", "xferlog_write_failed": "xferlog"}  # fmt: skip
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_OFFSET_BUCKETS = (0, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


def _session_refusal(reason: str) -> str:
    if reason in _LIMITS:
        return "limits"
    return "no_upstream" if reason == P.NO_UPSTREAM.decode().strip() else "upstream"


class Metrics:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"ftpalg_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(f"ftpalg_{name}", doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"ftpalg_{name}", doc, buckets=buckets, registry=r)

        self.sessions_active = gauge("sessions_active", "Open control sessions", "mode")
        self.sessions = counter("sessions", "Control sessions opened", "mode")
        self.rewrites = counter("rewrites", "PORT/EPRT/227/229 lines rewritten", "kind")
        self.refusals = counter("refusals", "Refused commands, replies, data connections "
                                "and sessions, by reason", "reason")  # fmt: skip
        self.pending = gauge("expectations_pending", "Announced data endpoints not yet used")
        self.expectations = counter(
            "expectations",
            "Expectations ended: used, expired, replaced, dropped with the session",
            "outcome",
        )
        self.data = counter("data_connections", "Data connections accepted", "mode")
        self.data_active = gauge("data_connections_active", "Data connections dialed/relayed")
        self.bytes = counter("data_bytes", "Data bytes relayed", "direction")
        self.relay_errors = counter("relay_errors", "Data connections ended by an error")
        self.upstream_failures = counter("upstream_connect_failures", "Failed server connects")
        self.upstream_latency = histogram(
            "upstream_connect_seconds", "Successful server connects: time taken", _LATENCY_BUCKETS
        )
        self.seq_offset = histogram(
            "seq_offset_bytes",
            "|seq offset| of the rewritten direction after each rewrite",
            _OFFSET_BUCKETS,
        )
        self.violations = counter("protocol_violations", "Framing errors (session closed)", "side")
        self.errors = counter("errors", "Internal, accept and xferlog errors", "what")
        self.reloads = counter("config_reloads", "SIGHUP reloads", "result")
        for labels, metric in [(MODES, self.sessions_active), (MODES, self.sessions),
                               (KINDS, self.rewrites), (REASONS, self.refusals),
                               (("used", "expired", "replaced", "dropped"), self.expectations),
                               (("active", "passive"), self.data), (DIRECTIONS, self.bytes),
                               (("client", "server"), self.violations),
                               (tuple(set(_ERRORS.values())), self.errors),
                               (("ok", "failed"), self.reloads)]:  # fmt: skip
            for label in labels:
                metric.labels(label)  # every series exists from the start, at 0

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Account for one log event (called for every event, whatever the log level)."""
        if event == "rewrite":
            self.rewrites.labels(fields["kind"]).inc()
            self.pending.inc()
            self.seq_offset.observe(abs(fields["seq_offset"]))
        elif event == "data_accepted":
            self.pending.dec()
            self.expectations.labels("used").inc()
            self.data.labels(fields["mode"]).inc()
            self.data_active.inc()
        elif event == "data_finished":
            self.data_active.dec()
            self.bytes.labels("to_client").inc(fields["bytes_to_client"])
            self.bytes.labels("to_server").inc(fields["bytes_to_server"])
            if fields["result"] != "ok":
                self.relay_errors.inc()
        elif event in ("expectation_expired", "expectation_replaced"):
            self.pending.dec()
            self.expectations.labels(event.removeprefix("expectation_")).inc()
        elif event == "session_opened":
            self.sessions.labels(fields["mode"]).inc()
            self.sessions_active.labels(fields["mode"]).inc()
            self.upstream_latency.observe(fields["connect_ms"] / 1000)
        elif event == "session_closed":
            self.sessions_active.labels(self.mode).dec()
            if fields.get("expectation_dropped"):
                self.pending.dec()
                self.expectations.labels("dropped").inc()
        elif event == "command_refused":
            self.refusals.labels(fields["reason"]).inc()
        elif event in _SIMPLE_REFUSALS:
            self.refusals.labels(_SIMPLE_REFUSALS[event]).inc()
        elif event == "session_refused":
            self.refusals.labels(_session_refusal(str(fields.get("reason", "")))).inc()
        elif event == "upstream_connect_failed":
            self.upstream_failures.inc()
        elif event == "protocol_violation":
            self.violations.labels(fields["side"]).inc()
        elif event in _ERRORS:
            self.errors.labels(_ERRORS[event]).inc()
        elif event in ("reloaded", "reload_failed"):
            self.reloads.labels("ok" if event == "reloaded" else "failed").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` over HTTP/1.1 on a pre-bound socket; one request per connection."""

    def __init__(self, metrics: Metrics, sock: socket.socket) -> None:
        self.metrics = metrics
        self.sock = sock
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, sock=self.sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path not in (b"/metrics", b"/"):
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            else:
                status, body, ctype = "200 OK", self.metrics.exposition(), CONTENT_TYPE_LATEST
            head_out = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
            writer.write(head_out.encode() + (b"" if method == b"HEAD" else body))
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()
