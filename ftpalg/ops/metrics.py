"""Prometheus metrics, from ftpalg's typed observations, served on ``--metrics ADDR:PORT``.

How this works. Every observation of the daemon — the core's, carried out by
`ControlSession`, and the gateway's own — reaches `Metrics.observe` through the
`ftpalg.ops.observer.Observer` before its log line is written, whatever the log level.
`observe` matches on the observation's type and reads its typed fields (a refusal's
`Refusal`, a data connection's `DataMode`, a failure's `Fault`); it never looks at log event
names or reply text. Gauges that count things alive (sessions, expectations, data
connections) go up on the observation that creates the thing and down on the one that ends
it.

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

from ftpalg.core.messages import Side
from ftpalg.core.observations import (
    CommandRefused,
    Converted,
    DataEnded,
    DataMode,
    DataRejected,
    DataStarted,
    ExpectationEnded,
    ExpectationOutcome,
    LoginFailed,
    MalformedCommandRefused,
    NoDataPort,
    Observation,
    ProtocolViolation,
    Refusal,
    ReplyAddressMismatch,
    RewriteImpossible,
    Rewritten,
    SessionClosed,
    TlsPassthrough,
    TlsRefused,
    TlsTerminated,
    UnterminatedAddressLineDropped,
)
from ftpalg.core.wire import Kind
from ftpalg.ops.events import (
    Failed,
    Fault,
    KernelState,
    Reloaded,
    SessionOpened,
    SessionRefused,
    UpstreamConnectFailed,
)


def _reason(obs: CommandRefused | DataRejected | SessionRefused) -> Refusal:
    return obs.kind if isinstance(obs, SessionRefused) else obs.reason


MODES = ("transparent", "reverse")
KINDS = tuple(kind.value for kind in Kind)
REASONS = tuple(reason.value for reason in Refusal)
DIRECTIONS = ("to_client", "to_server")
_FAULT_LABELS = {
    Fault.INTERNAL: "internal",
    Fault.ACCEPT: "accept",
    Fault.ACCEPT_PAUSED: "accept",
    Fault.DATA_ACCEPT: "data_accept",
    Fault.OBSERVER: "observer",
    Fault.XFERLOG_OPEN: "xferlog",
    Fault.XFERLOG_WRITE: "xferlog",
    Fault.RELAY_WORKER: "relay_worker",
}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_OFFSET_BUCKETS = (0, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


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
        self.nat64_sessions = counter(
            "nat64_sessions",
            "Control sessions translated between an IPv6 client and an IPv4 server (NAT64)",
            "mode",
        )
        self.rewrites = counter("rewrites", "PORT/EPRT/227/229 lines rewritten", "kind")
        self.refusals = counter(
            "refusals",
            "Refused commands, replies, data connections and sessions, by reason",
            "reason",
        )
        self.pending = gauge("expectations_pending", "Announced data endpoints not yet used")
        self.expectations = counter(
            "expectations",
            "Expectations ended: used, expired, replaced, dropped with the session",
            "outcome",
        )
        self.data = counter("data_connections", "Data connections accepted", "mode")
        self.data_active = gauge("data_connections_active", "Data connections dialed/relayed")
        self.bytes = counter("data_bytes", "Data bytes relayed", "direction")
        self.relay_errors = counter(
            "relay_errors", "Data connections ended by an error or a non-2xx final reply"
        )
        self.login_failures = counter(
            "login_failures", "USER/PASS/ACCT answered with 530 (or PASS with another 5xx)"
        )
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
        self.errors = counter("errors", "Internal, accept, xferlog and relay worker errors", "what")
        self.reloads = counter("config_reloads", "SIGHUP reloads", "result")
        self.tls = counter("tls_sessions", "Sessions whose client sent AUTH, by outcome", "outcome")
        self.conversions = counter(
            "conversions",
            "Transfers whose data mode ftpalg converted (data_policy), by the client's kind of "
            "command and the one sent upstream",
            "client_kind",
            "upstream_kind",
        )
        self.kernel_present = gauge(
            "kernel_rules_present", "1 while ftpalg's table and routing are installed"
        )
        self.kernel_restores = counter(
            "kernel_rules_restored", "Times ftpalg re-installed its deleted kernel state"
        )
        every_label: list[tuple[tuple[str, ...], Counter | Gauge]] = [
            (MODES, self.sessions_active),
            (MODES, self.sessions),
            (MODES, self.nat64_sessions),
            (KINDS, self.rewrites),
            (REASONS, self.refusals),
            (tuple(o.value for o in ExpectationOutcome), self.expectations),
            (tuple(m.value for m in DataMode), self.data),
            (DIRECTIONS, self.bytes),
            (tuple(s.value for s in Side), self.violations),
            (tuple(sorted(set(_FAULT_LABELS.values()))), self.errors),
            (("ok", "failed"), self.reloads),
            (("passthrough", "refused", "terminated"), self.tls),
        ]
        for labels, metric in every_label:
            for label in labels:
                metric.labels(label)  # every series exists from the start, at 0
        # the series observe() moves, looked up once: labels() is a lock and a dict per call
        self._rewrites = {kind: self.rewrites.labels(kind.value) for kind in Kind}
        self._refusals = {reason: self.refusals.labels(reason.value) for reason in Refusal}
        self._outcomes = {o: self.expectations.labels(o.value) for o in ExpectationOutcome}
        self._data = {mode: self.data.labels(mode.value) for mode in DataMode}
        self._opened = {mode: self.sessions.labels(mode) for mode in MODES}
        self._active = {mode: self.sessions_active.labels(mode) for mode in MODES}
        self._to_client = self.bytes.labels("to_client")
        self._to_server = self.bytes.labels("to_server")

    def observe(self, obs: Observation) -> None:
        """Account for one observation (called for every one, whatever the log level)."""
        match obs:
            case Rewritten():
                if obs.before != obs.after:  # an unchanged announcement is no rewrite
                    self._rewrites[obs.kind].inc()
                self.pending.inc()
                self.seq_offset.observe(abs(obs.seq_offset))
            case ExpectationEnded():
                self.pending.dec()
                self._outcomes[obs.outcome].inc()
            case DataStarted():
                self._data[obs.mode].inc()
                self.data_active.inc()
            case DataEnded():
                self.data_active.dec()
                self._to_client.inc(obs.bytes_to_client)
                self._to_server.inc(obs.bytes_to_server)
                if not obs.ok:
                    self.relay_errors.inc()
            case SessionOpened():
                self._series(self._opened, self.sessions, obs.mode).inc()
                self._series(self._active, self.sessions_active, obs.mode).inc()
                self.upstream_latency.observe(obs.connect_ms / 1000)
                if obs.nat64:
                    self.nat64_sessions.labels(obs.mode).inc()
            case SessionClosed():
                self._series(self._active, self.sessions_active, self.mode).dec()
            case CommandRefused() | DataRejected() | SessionRefused():
                self._refusals[_reason(obs)].inc()
            case MalformedCommandRefused() | UnterminatedAddressLineDropped():
                self._refusals[Refusal.MALFORMED].inc()
            case ReplyAddressMismatch():
                self._refusals[Refusal.MISMATCH].inc()
            case NoDataPort():
                self._refusals[Refusal.NO_DATA_PORT].inc()
            case RewriteImpossible():
                self._refusals[Refusal.UNREPRESENTABLE].inc()
            case UpstreamConnectFailed():
                self.upstream_failures.inc()
            case ProtocolViolation():
                self.violations.labels(obs.side.value).inc()
            case Failed():
                self.errors.labels(_FAULT_LABELS[obs.what]).inc()
            case Reloaded():
                self.reloads.labels("ok" if obs.ok else "failed").inc()
            case LoginFailed():
                self.login_failures.inc()
            case Converted():
                self.conversions.labels(obs.client_kind, obs.upstream_kind).inc()
            case TlsPassthrough():
                self.tls.labels("passthrough").inc()
            case TlsRefused():
                self.tls.labels("refused").inc()
            case TlsTerminated():
                self.tls.labels("terminated").inc()
            case KernelState():
                self.kernel_present.set(1 if obs.present else 0)
                if obs.restored:
                    self.kernel_restores.inc()

    @staticmethod
    def _series(known: dict[str, Any], metric: Counter | Gauge, mode: str) -> Any:
        """The series of `mode`: looked up once, or made (a mode outside MODES) as before."""
        series = known.get(mode)
        return series if series is not None else metric.labels(mode)

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
            head_out = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head_out.encode() + (b"" if method == b"HEAD" else body))
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()
