"""Loopback fixtures: a real pyftpdlib server and a real ftpalg process (reverse mode)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_CODE = """
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
root, port = sys.argv[1], int(sys.argv[2])
auth = DummyAuthorizer()
auth.add_user("user", "secret", root, perm="elradfmw")
FTPHandler.authorizer = auth
FTPHandler.permit_foreign_addresses = False
FTPServer(("127.0.0.1", port), FTPHandler).serve_forever()
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {proc.stderr.read() if proc.stderr else ''!r}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} never accepted")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def ftp_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def ftp_server(ftp_root: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE, str(ftp_root), str(port)], stderr=subprocess.PIPE
    )
    try:
        wait_port("127.0.0.1", port, proc)
        yield port
    finally:
        stop(proc)


class Alg:
    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, log: Path):
        self.proc, self.host, self.port, self.log = proc, host, port, log

    def log_text(self) -> str:
        return self.log.read_text()


def launch_alg(
    tmp_path: Path, upstream_port: int, *extra: str, prefix: tuple[str, ...] = ()
) -> Alg:
    """ftpalg on 127.0.0.2 in front of the server on 127.0.0.1 (reverse mode); `prefix`
    wraps the command (e.g. prlimit)."""
    port = free_port("127.0.0.2")
    log = tmp_path / f"ftpalg-{port}.log"
    args = [
        *prefix,
        sys.executable,
        "-m",
        "ftpalg",
        "--listen",
        f"127.0.0.2:{port}",
        "--upstream",
        f"127.0.0.1:{upstream_port}",
        "--log-format",
        "json",
        "--grace-period",
        "2",
        *extra,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"}
        )
    try:
        wait_port("127.0.0.2", port, proc)
    except BaseException:
        stop(proc)
        raise
    return Alg(proc, "127.0.0.2", port, log)


@pytest.fixture
def reverse_alg(ftp_server: int, tmp_path: Path) -> Iterator[Alg]:
    alg = launch_alg(tmp_path, ftp_server)
    try:
        yield alg
    finally:
        stop(alg.proc)
