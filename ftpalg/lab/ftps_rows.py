"""The FTPS rows of `ftpalg lab --ftps` (docs/ftps.md): explicit FTPS through ftpalg.

How this works: `cases()` lists the rows, each with the `tls` policy it exercises:

- `passthrough` (transparent mode): curl `--ssl-reqd` and lftp `ftp:ssl-force`, passive,
  against a vsftpd that requires TLS for logins and data (`start_tls_servers`: one per IP
  version on the server namespace's second addresses). ftpalg runs with `--tls passthrough`
  on the kernel data plane behind a closed gateway that has the one rule for ftpalg's tag,
  so the session's data gets through its window and only there (`run_ftpalg`).
- `terminate` (reverse mode): curl `--ssl-reqd` (PROT P) to ftpalg on the gateway's inside
  addresses, port 2121, which is the TLS server (a throw-away self-signed certificate) in
  front of the lab's plain IPv4 server; the IPv6 rows are IPv6 clients of that server.
- `terminate+upstream` (reverse mode, `tls_upstream`): the same on port 2122 in front of the
  vsftpd that requires TLS: ftpalg speaks FTPS to it too, its data connections resuming
  the control connection's TLS session.

With `--kernel`, `run_kernel` runs the passthrough rows through the kernel's ftp helper and
masquerade with outbound forwarding open: the helper cannot read the encrypted `227`, so
behind the plain rows' forward policy (only what it expects) the data would be dropped.
Every transfer is judged by sha256 (`matrix.run_case`); the "ftpalg saw" text of a row comes
from ftpalg's own log events of that transfer (`tls_passthrough` + `tls_data_window`, or
`tls_terminate`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import FtpTarget
from ftpalg.lab.gateway import apply_closed_gateway, apply_kernel_nat
from ftpalg.lab.matrix import FILE_NAME, client_workdir, run_case, transfer_timeout
from ftpalg.lab.netns import Lab
from ftpalg.lab.server_base import FtpServer, make_file
from ftpalg.lab.servers import self_signed, start_vsftpd
from ftpalg.lab.table import Case, Outcome, shorten

TERMINATE_PORT, UPSTREAM_PORT = 2121, 2122
UPSTREAM = "terminate+upstream"
ROWS = (
    ("passthrough", "curl-ftps", 4),
    ("passthrough", "lftp-ftps", 4),
    ("passthrough", "curl-ftps", 6),
    ("terminate", "curl-ftps", 4),
    ("terminate", "curl-ftps", 6),
    (UPSTREAM, "curl-ftps", 4),
)
Report = Callable[[Case, Outcome], None]


def cases(quick: bool = False) -> list[Case]:
    """The FTPS rows, each a download and an upload; `quick` leaves lftp out."""
    return [
        Case(mode, version, upload, tls)
        for tls, mode, version in ROWS
        if not (quick and mode.startswith("lftp"))
        for upload in (False, True)
    ]


@dataclass
class FtpsSite:
    """The servers the FTPS rows use and the files they serve (sha256 per server)."""

    tls_servers: dict[int, FtpServer]  # vsftpd requiring TLS, per IP version
    plain: FtpServer  # the lab's plain IPv4 server: behind ftpalg's terminate
    digests: dict[str, str]  # server kind+address -> sha256 of its FILE_NAME
    size: int

    def digest(self, srv: FtpServer) -> str:
        return self.digests[f"{srv.kind} {srv.address}"]


def start_tls_servers(lab: Lab, plain: FtpServer, plain_digest: str, size: int) -> FtpsSite:
    a = lab.addresses
    servers = {
        4: start_vsftpd(lab, a.servers_v4[1], tls=True),
        6: start_vsftpd(lab, a.servers_v6[1], tls=True),
    }
    digests = {f"{plain.kind} {plain.address}": plain_digest}
    for srv in servers.values():
        digests[f"{srv.kind} {srv.address}"] = make_file(srv.root, FILE_NAME, size)
    return FtpsSite(servers, plain, digests, size)


def _target(lab: Lab, site: FtpsSite, case: Case) -> tuple[FtpServer, FtpTarget]:
    """The server that holds the files and where the client connects for `case`."""
    a = lab.addresses
    if case.tls == "passthrough":
        srv = site.tls_servers[case.version]  # anonymous: lftp sends AUTH only with a login
        return srv, FtpTarget(srv.address, srv.port, "anonymous", "lab@")
    if case.tls == UPSTREAM:
        srv = site.tls_servers[4]
        return srv, FtpTarget(a.gw_inside_v4, UPSTREAM_PORT, "anonymous", "lab@")
    face = a.gw_inside_v4 if case.version == 4 else a.gw_inside_v6
    plain = site.plain
    return plain, FtpTarget(face, TERMINATE_PORT, plain.user, plain.password)


def _what_ftpalg_saw(alg: AlgProcess | None, since: int, tls: str) -> str | None:
    if alg is None:
        return None
    passed, windows = alg.named("tls_passthrough", since), alg.named("tls_data_window", since)
    terminated = alg.named("tls_terminate", since)
    if terminated:
        upstream = "TLS upstream (PROT P)" if tls == UPSTREAM else "plain upstream"
        return f"{shorten(terminated[-1]['command'])} answered by ftpalg, {upstream}"
    if not passed:
        return "no AUTH passed through"
    text = f"{shorten(passed[-1]['command'])} passed through"
    if windows:
        w = windows[-1]
        text += ", data window " + ("opened" if w["opened"] else f"not opened: {w['reason']}")
    return text


def run_rows(
    lab: Lab,
    path: str,
    site: FtpsSite,
    all_cases: Sequence[Case],
    tls: str,
    alg: AlgProcess | None,
    report: Report,
) -> dict[int, Outcome]:
    """Run the cases of one tls policy on `path`; outcomes by index into `all_cases`."""
    timeout = transfer_timeout(site.size)
    out: dict[int, Outcome] = {}
    with client_workdir(lab, site.size) as (work, upload_digest):
        for i, case in enumerate(all_cases):
            if case.tls != tls:
                continue
            srv, target = _target(lab, site, case)
            since = alg.mark() if alg else 0
            ok, reason, result = run_case(
                lab, path, case, srv, target, site.digest(srv), work, upload_digest, timeout
            )
            saw = _what_ftpalg_saw(alg, since, tls)
            out[i] = Outcome(ok, result.nbytes if ok else 0, result.seconds, reason, saw)
            report(case, out[i])
    return out


def run_kernel(
    lab: Lab, site: FtpsSite, all_cases: Sequence[Case], report: Report
) -> list[Outcome | None]:
    """The passthrough rows through the kernel helper on an open masquerading gateway."""
    apply_kernel_nat(lab, outbound=True)
    done = run_rows(lab, "kernel", site, all_cases, "passthrough", None, report)
    return [done.get(i) for i in range(len(all_cases))]


def run_ftpalg(
    lab: Lab,
    site: FtpsSite,
    all_cases: Sequence[Case],
    step: Callable[[str], None],
    report: Report,
) -> tuple[list[Outcome | None], AlgProcess]:
    """Passthrough rows (transparent ftpalg), then terminate rows (reverse-mode ftpalg);
    returns the outcomes and the ftpalg still running (the terminating one)."""
    step("gateway: closed + the rule for ftpalg's tag; ftpalg --tls passthrough, kernel plane")
    apply_closed_gateway(lab, pinholes=True)
    listen = ["--listen", "0.0.0.0:21", "--listen", "[::]:21"]
    alg = start_ftpalg(lab, [*listen, "--tls", "passthrough", "--data-plane", "kernel"])
    done = run_rows(lab, "ftpalg", site, all_cases, "passthrough", alg, report)
    alg.stop()
    a = lab.addresses
    certs = Path(tempfile.mkdtemp(prefix=f"{lab.id}-tls-"))
    lab.on_close(lambda: shutil.rmtree(certs, ignore_errors=True))
    cert, key = self_signed(certs)
    faces = f"{a.gw_inside_v4}:{TERMINATE_PORT}, [{a.gw_inside_v6}]:{TERMINATE_PORT}"
    step(f"ftpalg --tls terminate (reverse mode, {faces}) in front of {site.plain.kind}")
    args = ["--listen", f"{a.gw_inside_v4}:{TERMINATE_PORT}"]
    args += ["--listen", f"[{a.gw_inside_v6}]:{TERMINATE_PORT}"]
    args += ["--upstream", f"{site.plain.address}:{site.plain.port}"]
    tls = ["--tls", "terminate", "--tls-cert", str(cert), "--tls-key", str(key)]
    alg = start_ftpalg(lab, [*args, *tls])
    done |= run_rows(lab, "ftpalg", site, all_cases, "terminate", alg, report)
    alg.stop()
    server = site.tls_servers[4]
    face = f"{a.gw_inside_v4}:{UPSTREAM_PORT}"
    step(f"ftpalg --tls terminate --tls-upstream (reverse mode, {face}) in front of vsftpd+TLS")
    args = ["--listen", face, "--upstream", f"{server.address}:{server.port}", "--tls-upstream"]
    alg = start_ftpalg(lab, [*args, *tls])
    done |= run_rows(lab, "ftpalg", site, all_cases, UPSTREAM, alg, report)
    return [done.get(i) for i in range(len(all_cases))], alg
