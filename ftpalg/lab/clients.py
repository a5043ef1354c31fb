"""Real FTP clients (curl, lftp, Python ftplib) run inside the lab's client namespace.

How this works: each `*_transfer` runs one client process in `lab.client_role` for one
download or upload and returns a `TransferResult`. A download is judged by the file that
arrived: `sha256` is the digest of the local file (None when the client failed). An upload
reports the digest of the file that was sent; the caller compares it with the file the server
received (`FtpServer.uploaded(name)`). On failure `detail` holds the tail of the client's
stderr (curl -v / lftp debug output, so the last FTP replies are visible). Every client has a
hard time limit; a hung transfer becomes `ok=False`, never a hung test.

Modes: curl `epsv` (default), `pasv` (--disable-epsv), `eprt` (-P -), `port` (-P -
--disable-eprt); lftp, ftplib and wget (downloads only) `passive=True|False`. On IPv6 curl
and ftplib always use EPSV/EPRT (PASV/PORT cannot carry an IPv6 address). FTPS modes
(`FTPS_MODES`): curl `--ssl-reqd -k` and lftp `ftp:ssl-force` (PROT P, certificate not
verified), passive.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ftpalg.lab.netns import IPAddress, Lab, LabError

CurlMode = Literal["epsv", "pasv", "eprt", "port"]
CURL_MODE_FLAGS: dict[str, list[str]] = {
    "epsv": [],
    "pasv": ["--disable-epsv"],
    "eprt": ["-P", "-"],
    "port": ["-P", "-", "--disable-eprt"],
}
DETAIL_CHARS = 2000


@dataclass(frozen=True)
class FtpTarget:
    """Where a client connects; user None means anonymous."""

    address: IPAddress
    port: int = 21
    user: str | None = None
    password: str | None = None

    @property
    def host(self) -> str:
        return f"[{self.address}]" if self.address.version == 6 else str(self.address)

    def url(self, path: str) -> str:
        return f"ftp://{self.host}:{self.port}/{path.lstrip('/')}"


@dataclass(frozen=True)
class TransferResult:
    ok: bool
    sha256: str | None
    nbytes: int
    seconds: float
    detail: str


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _run(
    lab: Lab, argv: list[str], timeout: float, input: str | None = None
) -> tuple[int, str, str, float]:
    start = time.monotonic()
    try:
        cp = lab.run(lab.client_role, argv, timeout=timeout, input=input)
    except LabError as exc:
        return -1, "", str(exc), time.monotonic() - start
    return cp.returncode, cp.stdout, cp.stderr, time.monotonic() - start


def _result(
    rc: int, err: str, seconds: float, checked: Path, what: str, download: bool
) -> TransferResult:
    if rc != 0 or (download and not checked.exists()):
        tail = err[-DETAIL_CHARS:].strip()
        return TransferResult(False, None, 0, seconds, f"{what} exit {rc}: {tail}")
    digest, n = _digest(checked)
    return TransferResult(True, digest, n, seconds, "")


def curl_transfer(
    lab: Lab,
    target: FtpTarget,
    remote: str,
    local: Path,
    upload: bool = False,
    mode: CurlMode = "epsv",
    timeout: float = 30.0,
    extra: tuple[str, ...] = (),
) -> TransferResult:
    """curl download (remote -> local) or upload (local -> remote) in the given mode."""
    argv = ["curl", "-sS", "-v", "-g", "--max-time", f"{timeout:g}", "--connect-timeout", "10"]
    argv += CURL_MODE_FLAGS[mode]
    if target.user:
        argv += ["-u", f"{target.user}:{target.password or ''}"]
    argv += ["-T", str(local)] if upload else ["-o", str(local)]
    argv += [*extra, target.url(remote)]
    rc, _out, err, secs = _run(lab, argv, timeout + 10)
    return _result(rc, err, secs, local, f"curl {mode}", download=not upload)


def _lftp_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lftp_transfer(
    lab: Lab,
    target: FtpTarget,
    remote: str,
    local: Path,
    upload: bool = False,
    passive: bool = True,
    timeout: float = 30.0,
    tls: bool = False,
) -> TransferResult:
    """lftp `get`/`put` with ftp:passive-mode on|off; no retries, 10 s network timeout.
    `tls`: explicit FTPS required (ftp:ssl-force, PROT P, certificate not verified)."""
    login = ""
    if target.user:
        login = "-u " + _lftp_quote(f"{target.user},{target.password or ''}") + " "
    xfer = (
        f"put {_lftp_quote(str(local))} -o {_lftp_quote(remote)}"
        if upload
        else f"get {_lftp_quote(remote)} -o {_lftp_quote(str(local))}"
    )
    script = "\n".join(
        [
            "debug 3",
            "set cmd:fail-exit yes",
            "set net:max-retries 1",
            "set net:timeout 10",
            "set net:reconnect-interval-base 1",
            *(TLS_LFTP if tls else ["set ftp:ssl-allow no"]),
            f"set ftp:passive-mode {'on' if passive else 'off'}",
            "set xfer:clobber on",
            f"open {login}{_lftp_quote(target.url(''))}",
            xfer,
            "exit",
        ]
    )
    rc, _out, err, secs = _run(lab, ["lftp", "-f", "/dev/stdin"], timeout + 10, script + "\n")
    what = f"lftp {'passive' if passive else 'active'}"
    return _result(rc, err, secs, local, what, download=not upload)


TLS_LFTP = [
    "set ftp:ssl-force true",
    "set ftp:ssl-protect-data true",
    "set ssl:verify-certificate no",
]


def ftplib_transfer(
    lab: Lab,
    target: FtpTarget,
    remote: str,
    local: Path,
    upload: bool = False,
    passive: bool = True,
    timeout: float = 30.0,
) -> TransferResult:
    """Python ftplib (`python -m ftpalg.lab.ftplib_client`) with set_pasv(passive)."""
    argv = [
        sys.executable,
        "-m",
        "ftpalg.lab.ftplib_client",
        "--host",
        str(target.address),
        "--port",
        str(target.port),
        "--timeout",
        f"{timeout:g}",
        "--passive" if passive else "--active",
    ]
    if target.user:
        argv += ["--user", target.user, "--password", target.password or ""]
    argv += ["--upload", str(local), remote] if upload else ["--download", remote, str(local)]
    rc, out, err, secs = _run(lab, argv, timeout + 10)
    what = f"ftplib {'passive' if passive else 'active'}"
    try:
        report = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return TransferResult(False, None, 0, secs, f"{what} exit {rc}: {err[-DETAIL_CHARS:]}")
    if not report.get("ok"):
        detail = f"{what}: {report.get('error')}\n{err[-DETAIL_CHARS:]}".strip()
        return TransferResult(False, None, 0, secs, detail)
    result = _result(rc, err, secs, local, what, download=not upload)
    if result.ok and result.sha256 != report.get("sha256"):
        return TransferResult(False, None, 0, secs, f"{what}: digest mismatch {report}")
    return result


def wget_transfer(
    lab: Lab,
    target: FtpTarget,
    remote: str,
    local: Path,
    passive: bool = True,
    timeout: float = 30.0,
) -> TransferResult:
    """wget download (wget cannot upload over FTP); `-S` shows the server's replies."""
    argv = ["wget", "-S", "--tries=1", f"--timeout={min(timeout, 10.0):g}", "-O", str(local)]
    argv += [] if passive else ["--no-passive-ftp"]
    if target.user:
        argv += ["--user", target.user, "--password", target.password or ""]
    argv.append(target.url(remote))
    rc, _out, err, secs = _run(lab, argv, timeout + 10)
    return _result(rc, err, secs, local, f"wget {'passive' if passive else 'active'}", True)


# Every client mode of the lab matrix: name -> (client program, passive, curl mode)
CLIENT_MODES: dict[str, tuple[str, bool, CurlMode]] = {
    "curl-epsv": ("curl", True, "epsv"),
    "curl-pasv": ("curl", True, "pasv"),
    "curl-eprt": ("curl", False, "eprt"),
    "curl-port": ("curl", False, "port"),
    "lftp-passive": ("lftp", True, "epsv"),
    "lftp-active": ("lftp", False, "eprt"),
    "ftplib-pasv": ("ftplib", True, "pasv"),
    "ftplib-port": ("ftplib", False, "port"),
}
# Explicit FTPS (AUTH TLS, PBSZ 0, PROT P), passive: curl --ssl-reqd, lftp ftp:ssl-force
FTPS_MODES: dict[str, tuple[str, bool, CurlMode]] = {
    "curl-ftps": ("curl", True, "epsv"),
    "lftp-ftps": ("lftp", True, "epsv"),
}
# The IPv6-only client's modes through NAT64 (lab/nat64.py); wget only downloads
NAT64_MODES: dict[str, tuple[str, bool, CurlMode]] = {
    "curl-epsv": ("curl", True, "epsv"),
    "curl-pasv": ("curl", True, "pasv"),  # --disable-epsv (curl still sends EPSV on IPv6)
    "curl-eprt": ("curl", False, "eprt"),  # -P -
    "lftp-passive": ("lftp", True, "epsv"),
    "lftp-active": ("lftp", False, "eprt"),
    "ftplib-passive": ("ftplib", True, "epsv"),  # EPSV on IPv6
    "ftplib-active": ("ftplib", False, "eprt"),  # EPRT |2| on IPv6
    "wget-passive": ("wget", True, "epsv"),
    "wget-active": ("wget", False, "eprt"),
}
_MODES = {**NAT64_MODES, **CLIENT_MODES, **FTPS_MODES}
TLS_CURL = ("--ssl-reqd", "-k")


def run_transfer(
    lab: Lab,
    mode: str,
    target: FtpTarget,
    remote: str,
    local: Path,
    upload: bool = False,
    timeout: float = 30.0,
) -> TransferResult:
    """One transfer with a client mode from CLIENT_MODES, FTPS_MODES or NAT64_MODES
    (download unless `upload`)."""
    tls = mode in FTPS_MODES
    program, passive, curl_mode = _MODES[mode]
    if program == "wget":
        if upload:
            raise ValueError("wget cannot upload over FTP")
        return wget_transfer(lab, target, remote, local, passive, timeout)
    if program == "curl":
        extra = TLS_CURL if tls else ()
        return curl_transfer(lab, target, remote, local, upload, curl_mode, timeout, extra)
    if program == "lftp":
        return lftp_transfer(lab, target, remote, local, upload, passive, timeout, tls)
    return ftplib_transfer(lab, target, remote, local, upload, passive, timeout)
