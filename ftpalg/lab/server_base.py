"""The server handle, its work directory, start-up and readiness, and test files.

How this works: `workdir()` makes a private directory per server (`root/` served, `root/upload/`
writable by the daemon's upload user). `launch()` starts the daemon in the lab's server
namespace with stderr going to a file, registers `stop()` with the lab, and polls until the
control port accepts a TCP connection made from inside the server namespace; a daemon that
exits or never listens is stopped and reported with `ServerStartError` and its log tail.
`make_file()` writes deterministic pseudo-random data quickly and returns its sha256.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import pwd
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftpalg.lab.clients import FtpTarget
from ftpalg.lab.netns import IPAddress, Lab, LabError, LabUnavailable, stop_process

# Where each server's log names the client: pyftpdlib "IP:PORT-[user]", vsftpd 'Client "IP"',
# pure-ftpd's CLF transfer log "IP - user [date] ...", proftpd's command log "IP COMMAND".
LogMark = dict[Path, int]  # log file -> byte offset (FtpServer.log_mark)

_CLIENT_RE = {
    "pyftpdlib": re.compile(r"(\S+):\d+-\["),
    "vsftpd": re.compile(r'Client "([^"]+)"'),
    "pure-ftpd": re.compile(r"^(\S+) ", re.MULTILINE),
    "proftpd": re.compile(r"^(\S+) ", re.MULTILINE),  # its command log: "IP COMMAND"
}


class ServerUnavailable(LabUnavailable):
    """The server program is not installed here."""


class ServerStartError(LabError):
    """The server did not start or never accepted connections."""


@dataclass
class FtpServer:
    kind: str
    address: IPAddress
    port: int
    root: Path
    upload_dir: Path
    user: str | None
    password: str | None
    passive_ports: tuple[int, int]
    workdir: Path
    proc: subprocess.Popen[Any]
    log_files: list[Path] = field(default_factory=list)

    @property
    def target(self) -> FtpTarget:
        return FtpTarget(self.address, self.port, self.user, self.password)

    def upload_path(self, name: str) -> str:
        """FTP path to upload `name` to; it arrives at `uploaded(name)`."""
        return f"upload/{name}"

    def uploaded(self, name: str) -> Path:
        return self.upload_dir / name

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_mark(self) -> LogMark:
        """Where each log file ends now (after its last complete line), for the `since`
        arguments: a test reads only what the server logged after its own start."""
        marks: LogMark = {}
        for path in self.log_files:
            try:
                marks[path] = path.read_bytes().rfind(b"\n") + 1
            except OSError:
                marks[path] = 0
        return marks

    def log_text(self, since: LogMark | None = None) -> str:
        parts = []
        for path in self.log_files:
            try:
                with path.open("rb") as f:
                    f.seek((since or {}).get(path, 0))
                    data = f.read()
            except OSError:
                continue
            text = data.decode(errors="replace")
            parts.append(text.replace("\r\n", "\n").replace("\r", "\n"))  # as read_text()
        return "".join(parts)

    def seen_clients(self, since: LogMark | None = None) -> set[str]:
        """Client addresses the server's logs show (canonical text; IPv4-mapped as IPv4).

        Includes the server namespace's own address from the start-up readiness probe
        (unless `since` is a `log_mark()` taken after it).
        """
        found: set[str] = set()
        for m in _CLIENT_RE[self.kind].finditer(self.log_text(since)):
            try:
                addr = ipaddress.ip_address(m.group(1))
            except ValueError:
                continue
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
                addr = addr.ipv4_mapped
            found.add(str(addr))
        return found

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def make_file(root: Path, name: str, size: int, seed: int | None = None) -> str:
    """Write `size` deterministic pseudo-random bytes to root/name (mode 0644); return sha256."""
    rng = random.Random(seed if seed is not None else f"{name}:{size}")
    block = rng.randbytes(1 << 20)
    digest = hashlib.sha256()
    path = root / name
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            k = (i * 7919) % len(block)  # rotate so consecutive MiB are not identical
            chunk = (block[k:] + block[:k])[: size - written]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            i += 1
    path.chmod(0o644)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def workdir(lab: Lab, kind: str, upload_owner: str | None) -> tuple[Path, Path, Path]:
    work = Path(tempfile.mkdtemp(prefix=f"{lab.id}-{kind}-"))
    work.chmod(0o755)  # daemons that drop privileges must reach root/
    root = work / "root"
    upload = root / "upload"
    upload.mkdir(parents=True)
    root.chmod(0o755)
    if upload_owner:
        pw = pwd.getpwnam(upload_owner)
        os.chown(upload, pw.pw_uid, pw.pw_gid)
    upload.chmod(0o755 if upload_owner else 0o777)
    return work, root, upload


def launch(
    lab: Lab, kind: str, argv: list[str], server: dict[str, Any], ready_timeout: float
) -> FtpServer:
    work: Path = server["workdir"]
    stderr_path = work / "stderr.log"
    with open(stderr_path, "wb") as err:
        proc = lab.popen(lab.server_role, argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    srv = FtpServer(kind=kind, proc=proc, **server)
    srv.log_files.insert(0, stderr_path)
    lab.on_close(srv.stop)
    deadline = time.monotonic() + ready_timeout
    while True:
        if not srv.running():
            problem = f"exited with code {proc.returncode}"
            break
        if lab.can_connect(lab.server_role, srv.address, srv.port, timeout=0.5):
            return srv
        if time.monotonic() > deadline:
            problem = f"did not accept connections within {ready_timeout:g} s"
            break
        time.sleep(0.05)
    log = srv.log_text()[-3000:]
    srv.stop()
    raise ServerStartError(f"{kind} on {srv.address} port {srv.port} {problem}:\n{log}")


REPO_ROOT = Path(__file__).resolve().parents[2]


def private_binary(program: str, env: str) -> str:
    """The server `program` that scripts/setup.sh unpacked into .lab-tools/ (servers that
    conflict with vsftpd in apt), else `$env`'s path first, else one on PATH."""
    candidates = [os.environ.get(env) or ""]
    candidates += [str(REPO_ROOT / ".lab-tools" / program / "usr/sbin" / program)]
    candidates += [shutil.which(program) or ""]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise ServerUnavailable(f"{program} not found (run ./scripts/setup.sh, or set {env})")


def need_ftp_user() -> None:
    try:
        pwd.getpwnam("ftp")
    except KeyError as exc:
        raise ServerUnavailable("system user 'ftp' is missing (useradd -r ftp)") from exc
