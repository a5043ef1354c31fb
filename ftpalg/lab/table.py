"""The `ftpalg lab` result table: pure data in, text out (no lab, no root needed).

How this works: the matrix is a list of `Case`s (client mode, IP version, download or upload).
Each gateway path that ran ("ftpalg", and "kernel" for `--kernel`) gives one `Outcome` per
case: ok or not, a failure reason, bytes, seconds, and the rewritten command as the client
and the server saw it. `render()` prints one row per case with the command columns of the
first path (ftpalg's, from its `rewrite` log events), then a result and an MB/s column per
path side by side. When another path captured its own commands (the kernel path, from
tcpdump), a second, smaller table lists them. Failures show as `FAIL [n]` with the reason in
numbered notes under the tables, so the columns stay narrow. `shorten()` keeps a `PORT`/`EPRT`
line whole and reduces a `227`/`229` reply to its code and address part (the prose differs
between servers and is never rewritten).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_227 = re.compile(r"^227 .*?(\(?\d+(?:,\d*){5}\)?)")
_229 = re.compile(r"^229 .*?(\((.)\2\2\d+\2\))")
_HEAD = re.compile(r"^(\w+ \w+(?: exit -?\d+)?):")  # "curl port exit 30:", "ftplib active:"
_ERROR_REPLY = re.compile(r"^(?:<|<---) [45]\d\d[ -]")  # curl -v / lftp debug: a server error
PATH_TITLES = {"ftpalg": "ftpalg", "kernel": "kernel"}
REASON_CHARS = 200
LEGEND = (
    "client side: the PORT/EPRT the client sent, or the 227/229 reply it received;\n"
    "server side: the same line as the server received it, or the reply as the server sent "
    "it\n(227/229 prose left out). MB/s: file bytes / wall time of the whole client run."
)


@dataclass(frozen=True)
class Case:
    mode: str  # a key of clients.CLIENT_MODES
    version: int  # 4 or 6
    upload: bool = False
    tls: str = ""  # FTPS rows: the tls policy ftpalg ran with ("passthrough", "terminate")

    @property
    def direction(self) -> str:
        return "put" if self.upload else "get"

    @property
    def label(self) -> str:
        tls = f" {self.tls}" if self.tls else ""
        return f"{self.mode}{tls} v{self.version} {self.direction}"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    nbytes: int
    seconds: float
    reason: str = ""  # why it failed ("" when ok)
    client_cmd: str | None = None  # the PORT/EPRT the client sent, or the 227/229 it got
    server_cmd: str | None = None  # what the server received or sent

    @property
    def mbps(self) -> float | None:
        return self.nbytes / self.seconds / 1e6 if self.ok and self.seconds > 0 else None


def shorten(line: str | None) -> str:
    """A command for the table: CR/LF (raw or as logged, escaped) removed, 227/229 prose cut."""
    if line is None:
        return "-"
    for tail in ("\\r\\n", "\\n", "\r\n", "\n", "\\r", "\r"):
        line = line.removesuffix(tail)
    for pattern in (_227, _229):
        m = pattern.match(line)
        if m:
            return f"{line[:3]} {m.group(1)}"
    return line


def reason_line(detail: str) -> str:
    """The most telling part of a client's failure output, cut to REASON_CHARS: the client's
    own error line, prefixed with "<client> <mode> exit N", plus the last 4xx/5xx reply."""
    lines = [x.strip() for x in detail.strip().splitlines() if x.strip()]
    if not lines:
        return "failed (no output)"
    picks = [x for x in lines if x.startswith(("curl:", "lftp:", "ftplib"))] or lines[-1:]
    text = picks[-1]
    head = _HEAD.match(lines[0])
    if head and not text.startswith(head.group(1)):
        text = f"{head.group(1)}: {text}"
    replies = [x for x in lines if _ERROR_REPLY.match(x)]
    if replies and replies[-1] not in text:
        text += f" [{replies[-1]}]"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Aligned text columns: a header, a rule, the rows (columns in `right` right-aligned)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row: Sequence[str]) -> str:
        cells = (
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    return [fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def render(cases: Sequence[Case], results: Mapping[str, Sequence[Outcome]]) -> str:
    """The whole report: main table, other paths' commands, failure notes, a summary."""
    paths = list(results)
    first = paths[0]
    notes: list[str] = []
    headers = ["mode", "ip", "dir", "client side", "server side"]
    for path in paths:
        headers += [PATH_TITLES.get(path, path), "MB/s"]
    rows = []
    for i, case in enumerate(cases):
        own = results[first][i]
        row = [case.mode, f"v{case.version}", case.direction]
        row += [shorten(own.client_cmd), shorten(own.server_cmd)]
        for path in paths:
            row += result_cells(path, case, results[path][i], notes)
        rows.append(row)
    right = {6 + 2 * k for k in range(len(paths))}
    text = grid(headers, rows, right)
    text += ["", LEGEND]
    for path in paths[1:]:
        outs = results[path]
        if any(o.client_cmd or o.server_cmd for o in outs):
            text += ["", f"Commands on the {path} path (tcpdump on the gateway's interfaces):"]
            sub = [
                [c.mode, f"v{c.version}", c.direction, shorten(o.client_cmd), shorten(o.server_cmd)]
                for c, o in zip(cases, outs, strict=True)
            ]
            text += grid(headers[:5], sub, set())
    if notes:
        text += ["", *notes]
    text += ["", summary(cases, results)]
    return "\n".join(text) + "\n"


def result_cells(path: str, case: Case, out: Outcome | None, notes: list[str]) -> list[str]:
    """The result and MB/s cells of one path; a failure's reason goes into `notes`."""
    if out is None:  # not run on this path
        return ["-", "-"]
    if out.ok:
        cell = "ok"
    else:
        notes.append(f"[{len(notes) + 1}] {path}, {case.label}: {out.reason}")
        cell = f"FAIL [{len(notes)}]"
    return [cell, f"{out.mbps:.1f}" if out.mbps is not None else "-"]


FTPS_LEGEND = (
    "tls: ftpalg's policy. passthrough: transparent mode in front of a vsftpd that requires\n"
    "TLS, the session relayed unread after the server's 234, its passive data let through a\n"
    "window (kernel data plane, closed gateway); terminate: reverse mode, ftpalg is the TLS\n"
    "server in front of the plain server (PROT P data); terminate+upstream: the same in front\n"
    "of the vsftpd requiring TLS, ftpalg its TLS client. kernel: the ftp conntrack helper +\n"
    "masquerade with outbound forwarding open (the helper cannot read an encrypted 227: behind\n"
    "the plain rows' forward policy its data would be dropped); '-': not applicable."
)


def render_ftps(cases: Sequence[Case], results: Mapping[str, Sequence[Outcome | None]]) -> str:
    """The FTPS table: one row per case with its tls policy and what ftpalg saw."""
    paths = list(results)
    notes: list[str] = []
    headers = ["tls", "mode", "ip", "dir", "ftpalg saw"]
    for path in paths:
        headers += [PATH_TITLES.get(path, path), "MB/s"]
    rows = []
    for i, case in enumerate(cases):
        own = results[paths[0]][i]
        row = [case.tls, case.mode, f"v{case.version}", case.direction]
        row.append((own.client_cmd if own else None) or "-")
        for path in paths:
            row += result_cells(path, case, results[path][i], notes)
        rows.append(row)
    right = {6 + 2 * k for k in range(len(paths))}
    text = ["FTPS:", *grid(headers, rows, right), "", FTPS_LEGEND]
    if notes:
        text += ["", *notes]
    text += ["", "FTPS " + summary(cases, results)]
    return "\n".join(text) + "\n"


def summary(cases: Sequence[Case], results: Mapping[str, Sequence[Outcome | None]]) -> str:
    parts = []
    for path, outs in results.items():
        ran = [o for o in outs if o is not None]
        parts.append(f"{path}: {sum(o.ok for o in ran)}/{len(ran)} ok")
    return "; ".join(parts)


def all_ok(results: Mapping[str, Sequence[Outcome | None]]) -> bool:
    return all(o.ok for outs in results.values() for o in outs if o is not None)
