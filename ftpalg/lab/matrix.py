"""The transfer matrix of `ftpalg lab`: which transfers run, and running them on one path.

How this works: `cases()` lists the matrix — every client mode of `clients.CLIENT_MODES` over
IPv4 (curl EPSV/PASV/EPRT/PORT, lftp passive/active, ftplib PASV/PORT) and the curl and lftp
modes that work over IPv6 (EPSV and EPRT), each as a download and an upload; `quick` keeps
curl only. `run_matrix()` runs the cases in order against the lab's servers (one per IP
version), checks every transfer by sha256 (a download against the served file, an upload
against the file that arrived at the server) and returns one `table.Outcome` per case. The
commands shown for a transfer come from a `Commands` source read right after it finishes:
`AlgCommands` takes ftpalg's `rewrite` log events (`before` is what the sender sent, `after`
what the receiver got), `CaptureCommands` takes the lines tcpdump saw on the gateway's inside
(client side) and outside (server side) interfaces. Transfers run one at a time, so "new
since the last transfer" is the transfer's own commands.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ftpalg.lab.alg import AlgProcess
from ftpalg.lab.capture import Capture
from ftpalg.lab.clients import CLIENT_MODES, FtpTarget, TransferResult, run_transfer
from ftpalg.lab.netns import Lab
from ftpalg.lab.server_base import FtpServer, make_file, sha256_file
from ftpalg.lab.table import Case, Outcome, reason_line
from ftpalg.ops.logs import escape

V6_MODES = ("curl-epsv", "curl-eprt", "lftp-passive", "lftp-active")
QUICK_V4 = ("curl-epsv", "curl-pasv", "curl-eprt", "curl-port")
QUICK_V6 = ("curl-epsv", "curl-eprt")
FILE_NAME = "lab.bin"
UPLOAD_NAME = "upload-source.bin"


def cases(quick: bool = False) -> list[Case]:
    """The matrix: IPv4 modes, then IPv6 modes; each a download and an upload."""
    v4 = QUICK_V4 if quick else tuple(CLIENT_MODES)
    v6 = QUICK_V6 if quick else V6_MODES
    return [
        Case(mode, version, upload)
        for version, modes in ((4, v4), (6, v6))
        for mode in modes
        for upload in (False, True)
    ]


class Commands:
    """Where the rewritten commands of the last transfer come from; the base has none."""

    def take(self) -> tuple[str | None, str | None]:
        """(client side, server side) of the newest rewrite since the previous call."""
        return None, None


ANNOUNCED = ("rewrite", "announce_unchanged", "converted")


class AlgCommands(Commands):
    def __init__(self, alg: AlgProcess) -> None:
        self.alg = alg
        self.seen = len(self._events())

    def _events(self) -> list[dict[str, object]]:
        """Every announced address line, rewritten or passed unchanged."""
        return [e for e in self.alg.events() if e.get("event") in ANNOUNCED]

    def take(self) -> tuple[str | None, str | None]:
        events = self._events()
        new, self.seen = events[self.seen :], len(events)
        if not new:
            return None, None
        last = new[-1]
        if last.get("event") == "converted":  # ftpalg answered the client, spoke its own
            client_kind, upstream_kind = last.get("client_kind"), last.get("upstream_kind")
            return f"{client_kind} (answered by ftpalg)", f"{upstream_kind} (ftpalg's own)"
        before, after = str(last.get("before")), str(last.get("after"))
        return (before, after) if last.get("kind") in ("PORT", "EPRT") else (after, before)


class CaptureCommands(Commands):
    def __init__(self, inside: Capture, outside: Capture) -> None:
        self.inside, self.outside = inside, outside
        self.seen = (len(inside.lines()), len(outside.lines()))

    def take(self) -> tuple[str | None, str | None]:
        ins, outs = self.inside.lines(), self.outside.lines()
        new_in, new_out = ins[self.seen[0] :], outs[self.seen[1] :]
        self.seen = (len(ins), len(outs))
        client = escape(new_in[-1][1]) if new_in else None
        server = escape(new_out[-1][1]) if new_out else None
        return client, server


def prepare_files(servers: dict[int, FtpServer], size: int) -> dict[int, str]:
    """Write the download file into every server's root; sha256 per IP version."""
    return {version: make_file(srv.root, FILE_NAME, size) for version, srv in servers.items()}


def transfer_timeout(size: int) -> float:
    """A generous limit: 30 s plus the size at 20 MB/s."""
    return 30.0 + size / 20e6


def run_matrix(
    lab: Lab,
    path: str,
    servers: dict[int, FtpServer],
    digests: dict[int, str],
    size: int,
    all_cases: Sequence[Case],
    commands: Commands,
    report: Callable[[int, Case, Outcome], None],
) -> list[Outcome]:
    """Run every case through whatever the gateway does now; `report` sees each outcome."""
    timeout = transfer_timeout(size)
    outcomes: list[Outcome] = []
    with client_workdir(lab, size) as (work, upload_digest):
        for i, case in enumerate(all_cases):
            srv = servers[case.version]
            ok, reason, result = run_case(
                lab,
                path,
                case,
                srv,
                srv.target,
                digests[case.version],
                work,
                upload_digest,
                timeout,
            )
            client_cmd, server_cmd = commands.take()
            outcome = Outcome(
                ok, result.nbytes if ok else 0, result.seconds, reason, client_cmd, server_cmd
            )
            outcomes.append(outcome)
            report(i, case, outcome)
    return outcomes


@contextlib.contextmanager
def client_workdir(lab: Lab, size: int) -> Iterator[tuple[Path, str]]:
    """A directory for the client's files with the upload source in it, and its sha256."""
    work = Path(tempfile.mkdtemp(prefix=f"{lab.id}-client-"))
    work.chmod(0o755)
    try:
        yield work, make_file(work, UPLOAD_NAME, size)
    finally:
        for leftover in work.iterdir():
            leftover.unlink(missing_ok=True)
        work.rmdir()


def run_case(
    lab: Lab,
    path: str,
    case: Case,
    srv: FtpServer,
    target: FtpTarget,
    digest: str,
    work: Path,
    upload_digest: str,
    timeout: float,
) -> tuple[bool, str, TransferResult]:
    """One transfer on `path` to `target` (the server, or ftpalg in front of it) judged by
    sha256: a download against `digest` (the file in `srv`'s root), an upload against the
    file that arrived at `srv`. (ok, why not, the client's result)."""
    if case.upload:
        name = f"{path}-{case.mode}-v{case.version}.bin"
        remote, local = srv.upload_path(name), work / UPLOAD_NAME
        result = run_transfer(lab, case.mode, target, remote, local, True, timeout)
        expected, arrived = upload_digest, srv.uploaded(name)
        got = sha256_file(arrived) if result.ok and arrived.exists() else None
        arrived.unlink(missing_ok=True)
    else:
        local = work / "download.bin"
        result = run_transfer(lab, case.mode, target, FILE_NAME, local, False, timeout)
        expected, got = digest, result.sha256
        local.unlink(missing_ok=True)
    if not result.ok:
        return False, reason_line(result.detail), result
    if got != expected:
        return False, f"sha256 mismatch: {got or 'no file'} != {expected}", result
    return True, "", result
