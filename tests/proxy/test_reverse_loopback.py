"""Reverse mode on loopback, no root: real pyftpdlib behind a real ftpalg process, real
clients (Python ftplib and curl) in every data mode; every transfer compares sha256."""

from __future__ import annotations

import ftplib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftpalg.proxy.relay_worker import WORKER_NICE
from tests.proxy.conftest import Alg, sha256


def ftplib_session(alg: Alg, passive: bool) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(alg.host, alg.port, timeout=10)
    ftp.login("user", "secret")
    ftp.set_pasv(passive)
    return ftp


@pytest.mark.parametrize("size", [0, 1, 1 << 20])
@pytest.mark.parametrize("passive", [True, False], ids=["pasv", "port"])
def test_ftplib_download_and_upload(
    reverse_alg: Alg, ftp_root: Path, tmp_path: Path, size: int, passive: bool
) -> None:
    (ftp_root / "src.bin").write_bytes(os.urandom(size))
    local = tmp_path / "down.bin"
    with ftplib_session(reverse_alg, passive) as ftp, local.open("wb") as out:
        ftp.retrbinary("RETR src.bin", out.write)
    assert sha256(local) == sha256(ftp_root / "src.bin")
    with ftplib_session(reverse_alg, passive) as ftp, local.open("rb") as src:
        ftp.storbinary("STOR up.bin", src)
    assert sha256(ftp_root / "up.bin") == sha256(local)


CURL_MODES = {
    "epsv": [],
    "pasv": ["--disable-epsv"],
    "eprt": ["-P", "-"],
    "port": ["-P", "-", "--disable-eprt"],
}


@pytest.mark.parametrize("mode", sorted(CURL_MODES))
def test_curl_modes(reverse_alg: Alg, ftp_root: Path, tmp_path: Path, mode: str) -> None:
    (ftp_root / "f.bin").write_bytes(os.urandom(300_000))
    out = tmp_path / "f.bin"
    url = f"ftp://user:secret@{reverse_alg.host}:{reverse_alg.port}/f.bin"
    run = subprocess.run(
        ["curl", "-sS", "--max-time", "20", *CURL_MODES[mode], url, "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert sha256(out) == sha256(ftp_root / "f.bin")


def events(alg: Alg) -> list[dict[str, object]]:
    return [json.loads(line) for line in alg.log_text().splitlines() if line.startswith("{")]


def test_refusals_and_logs(reverse_alg: Alg) -> None:
    with ftplib_session(reverse_alg, True) as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^500 .*is not your address"):
            ftp.sendcmd("PORT 10,0,0,1,18,67")
        with pytest.raises(ftplib.error_perm, match=r"^501 "):
            ftp.sendcmd("PORT 1,2,3")
        with pytest.raises(ftplib.error_perm, match=r"^500 .*< 1024"):
            ftp.sendcmd("PORT 127,0,0,1,0,22")
        assert ftp.sendcmd("NOOP").startswith("200")  # the session carries on
    log = events(reverse_alg)
    names = [e["event"] for e in log]
    assert names.count("command_refused") == 2 and "malformed_command_refused" in names
    assert not any("secret" in line for line in reverse_alg.log_text().splitlines())


def test_line_limit_and_sigterm(reverse_alg: Alg) -> None:
    with ftplib_session(reverse_alg, True) as ftp:
        ftp.sock.sendall(b"NOOP " + b"x" * 5000 + b"\r\n")
        reply = ftp.sock.recv(1000)
        assert reply.startswith(b"500 ") and b"longer than 4096" in reply
    reverse_alg.proc.send_signal(signal.SIGTERM)
    assert reverse_alg.proc.wait(10) == 0
    assert "stopped" in [e["event"] for e in events(reverse_alg)]


def test_bad_flags_are_one_line_errors() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ftpalg", "--listen", "nonsense"], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("ftpalg: ")


def test_listener_in_use_is_a_one_line_error(reverse_alg: Alg) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftpalg",
            "--listen",
            f"{reverse_alg.host}:{reverse_alg.port}",
            "--upstream",
            "127.0.0.1:21",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "cannot listen on" in run.stderr


def worker_pid(alg: Alg) -> int:
    """ftpalg's one child: the relay worker it forks before its loop starts (the port
    listens earlier: wait for `started`, when a kernel set-up's helpers are gone too)."""
    deadline = time.monotonic() + 10
    while '"started"' not in alg.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    children = Path(f"/proc/{alg.proc.pid}/task/{alg.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def socket_inodes(pid: int) -> set[str]:
    links = (os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return {link[8:-1] for link in links if link.startswith("socket:[")}


def listening_inode(host: str, port: int) -> str:
    """The inode of the TCP socket listening on host:port (/proc/net/tcp, state 0A)."""
    local = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if fields[1] == local and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on {host}:{port}")


def test_a_big_relay_runs_in_the_worker_process(reverse_alg: Alg, ftp_root: Path) -> None:
    """The worker runs as batch work at a lower priority; mid-download it holds the data
    connection's two sockets besides its own (never ftpalg's listener); the bytes arrive
    exact; SIGKILL of ftpalg takes the worker with it."""
    data = os.urandom(16 << 20)
    (ftp_root / "big.bin").write_bytes(data)
    worker = worker_pid(reverse_alg)
    assert os.sched_getscheduler(worker) == os.SCHED_BATCH  # yields to control lines
    daemon_nice = os.getpriority(os.PRIO_PROCESS, reverse_alg.proc.pid)
    assert os.getpriority(os.PRIO_PROCESS, worker) == min(daemon_nice + WORKER_NICE, 19)
    idle = socket_inodes(worker)  # its socket to ftpalg, and its loop's signal socket pair
    assert listening_inode(reverse_alg.host, reverse_alg.port) not in idle
    seen: list[int] = []
    got = bytearray()

    def chunk(block: bytes) -> None:
        got.extend(block)
        if len(got) > 4 << 20 and not seen:
            seen.append(len(socket_inodes(worker) - idle))

    with ftplib_session(reverse_alg, True) as ftp:
        ftp.retrbinary("RETR big.bin", chunk, blocksize=1 << 16)
    assert bytes(got) == data and seen == [2]
    reverse_alg.proc.send_signal(signal.SIGKILL)
    reverse_alg.proc.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{worker}").exists()


def test_without_its_worker_ftpalg_relays_itself(reverse_alg: Alg, ftp_root: Path) -> None:
    """The worker killed: one relay_worker_failed line, and big transfers still arrive exact
    (relayed by ftpalg itself from then on)."""
    data = os.urandom(4 << 20)
    (ftp_root / "big.bin").write_bytes(data)
    os.kill(worker_pid(reverse_alg), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "relay_worker_failed" not in reverse_alg.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(2):
        got = bytearray()
        with ftplib_session(reverse_alg, True) as ftp:
            ftp.retrbinary("RETR big.bin", got.extend)
        assert bytes(got) == data
    failed = [e for e in events(reverse_alg) if e["event"] == "relay_worker_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error", failed
