"""Hardening in the lab (issues 7 and 12): faults, hostile input and limits against a real
ftpalg in transparent mode, real servers and clients; every refusal is an FTP reply plus a log
line, and other sessions keep working.

Every test runs on both data planes: the module fixture `shared` is parametrized with
`--data-plane relay` (ftpalg carries the data bytes) and `--data-plane kernel` (each announced
data connection is an nftables pinhole, the kernel forwards it, ftpalg follows its conntrack
events; the gateway's forward chain accepts ftpalg's tag). Where the planes differ in how a
guarantee shows (the relay holds descriptors for a running transfer and closes a thief's
connection; the kernel holds pinhole elements and drops a thief's SYN), the test checks each
plane's own evidence.

One lab and one ftpalg per plane serve the whole module; each test gets its own `Baseline`
(ftpalg idle, the log offsets and ftpalg's descriptor count when the test began), so it looks
only at the log lines it caused and at descriptors relative to its own start, and passes alone
or in any order."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.clients import run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import FtpServer, make_file, sha256_file, start_server
from tests.lab.conftest import Baseline, baseline, idle_fds, start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

ALG_ARGS = shlex.split(
    "--listen 0.0.0.0:21 --connect-timeout 2 --expect-timeout 2 --line-timeout 2"
    " --data-ports 45000-45001"
)
PLANES = ("relay", "kernel")


def plane_args(plane: str) -> list[str]:
    return ["--data-plane", plane]


def pinhole_elements(lab: Lab) -> dict[str, int]:
    """How many elements each of ftpalg's pinhole sets and maps holds (kernel plane)."""
    out = lab.run("gw", ["nft", "-j", "list", "table", "inet", "ftpalg"])
    assert out.returncode == 0, out.stderr
    found = {}
    for item in json.loads(out.stdout)["nftables"]:
        body = item.get("set") or item.get("map")
        if body is not None and body["name"][:-1] in ("gate", "tag", "dnat", "snat"):
            found[body["name"]] = len(body.get("elem", []))
    assert set(found) >= {"gate4", "tag4", "dnat4", "snat4"}, found
    return found


def no_pinholes(lab: Lab, timeout: float = 5.0) -> bool:
    return wait_until(lambda: not any(pinhole_elements(lab).values()), timeout)


@dataclass
class Shared:
    """The module's lab: ftpalg on the gateway, pyftpdlib, vsftpd and a scripted server."""

    plane: str
    lab: Lab
    alg: AlgProcess
    pyftpd: FtpServer
    vsftpd: FtpServer
    digest: str
    scripted: str
    idle_fds: int = 0  # ftpalg's descriptors at rest, after its first session

    def client(self, host: str, *lines: str) -> list[str]:
        out = self.lab.run(
            "cli",
            ["python3", "-m", "ftpalg.lab.scripted", "client", host, "21", *lines],
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        replies: list[str] = json.loads(out.stdout)
        return replies


@dataclass
class Env:
    """One test's view of the shared lab."""

    shared: Shared
    base: Baseline

    @property
    def plane(self) -> str:
        return self.shared.plane

    @property
    def kernel(self) -> bool:
        return self.shared.plane == "kernel"

    @property
    def lab(self) -> Lab:
        return self.shared.lab

    @property
    def alg(self) -> AlgProcess:
        return self.shared.alg

    @property
    def pyftpd(self) -> FtpServer:
        return self.shared.pyftpd

    @property
    def vsftpd(self) -> FtpServer:
        return self.shared.vsftpd

    @property
    def digest(self) -> str:
        return self.shared.digest

    @property
    def scripted(self) -> str:
        return self.shared.scripted

    def named(self, event: str) -> list[dict[str, Any]]:
        """ftpalg's `event` lines logged since this test began."""
        return self.base.named(event)

    def fds(self) -> int:
        return self.alg.fds()

    def fds_back_to_baseline(self, timeout: float = 5.0) -> bool:
        return wait_until(lambda: self.fds() <= self.base.fds, timeout)

    def client(self, host: str, *lines: str) -> list[str]:
        return self.shared.client(host, *lines)

    def healthy(self, tmp: Path) -> None:
        """Another session still transfers correctly."""
        r = run_transfer(self.lab, "curl-epsv", self.vsftpd.target, "f.bin", tmp / "ok.bin")
        assert r.ok and r.sha256 == self.digest, r.detail


@pytest.fixture(scope="module", params=PLANES)
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    plane: str = request.param
    os.environ["FTPALG_LAB_LOG_COMMANDS"] = "1"
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=plane == "kernel")
        a = lab.addresses
        pyftpd = start_server(lab, "pyftpdlib", a.servers_v4[0])
        vsftpd = start_server(lab, "vsftpd", a.servers_v4[1])
        digest = make_file(pyftpd.root, "f.bin", 8 << 20, seed=1)
        assert make_file(vsftpd.root, "f.bin", 8 << 20, seed=1) == digest
        scripted = str(a.servers_v4[3])
        lab.popen("srv", ["python3", "-m", "ftpalg.lab.scripted", "server", scripted, "21"])
        assert wait_until(lambda: lab.can_connect("srv", a.servers_v4[3], 21), 10)
        alg = start_ftpalg(lab, [*ALG_ARGS, *plane_args(plane)])
        assert alg.named("started")[0]["data_plane"] == plane
        shared = Shared(plane, lab, alg, pyftpd, vsftpd, digest, scripted)
        # one session first: the event loop keeps a descriptor it opens at the first one
        assert shared.client(str(pyftpd.address), "QUIT\\r\\n")[-1].startswith("221")
        shared.idle_fds = idle_fds(alg)
        yield shared
    finally:
        os.environ.pop("FTPALG_LAB_LOG_COMMANDS", None)
        lab.close()


@pytest.fixture
def env(shared: Shared) -> Env:
    servers = (shared.pyftpd, shared.vsftpd)
    return Env(shared, baseline(shared.alg, servers, idle_fds=shared.idle_fds))


def login(user: str = "lab") -> tuple[str, str]:
    return (f"USER {user}\\r\\n", "PASS lab\\r\\n")


# ---- faults -------------------------------------------------------------------------------


def test_upstream_timeout_gives_421(env: Env) -> None:
    start = time.monotonic()
    replies = env.client("203.0.113.99")  # no such host: the dial times out or is unreachable
    assert replies[0].startswith("421 Service not available: cannot reach the FTP server")
    assert time.monotonic() - start < 8
    (failed,) = env.named("upstream_connect_failed")
    assert failed["upstream"] == "203.0.113.99:21"
    assert env.named("session_refused") and not env.named("session_opened")


def test_announced_data_connection_never_arrives(env: Env) -> None:
    """The announced endpoint is open while the expectation lives and closed once it expired:
    the client it was meant for cannot connect afterwards, and nothing is left (the relay's
    listener descriptor; the kernel plane's pinhole elements)."""
    code = """
import ftplib, socket, sys, time
ftp = ftplib.FTP(sys.argv[1], timeout=10)
ftp.login("lab", "lab")
host, port = ftplib.parse227(ftp.sendcmd("PASV"))
print("PASV", flush=True)
sys.stdin.readline()  # the test waits for the expiry
try:
    socket.create_connection((host, port), timeout=2)
    print("LATE connected")
except OSError as exc:
    print("LATE", type(exc).__name__)
print("NOOP", ftp.voidcmd("NOOP").split()[0])
"""
    argv = ["python3", "-c", code, str(env.pyftpd.address)]
    client = env.lab.popen("cli", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdout.readline() == "PASV\n"
    if env.kernel:
        assert pinhole_elements(env.lab)["gate4"] == 1  # the expectation is a pinhole
    assert wait_until(lambda: len(env.named("expectation_expired")) == 1, 10)
    if env.kernel:
        assert no_pinholes(env.lab), pinhole_elements(env.lab)
    out, _ = client.communicate("\n", timeout=20)
    assert client.returncode == 0 and "LATE connected" not in out, out
    assert "LATE " in out and "NOOP 200" in out, out
    assert not env.named("data_accepted")
    assert env.fds_back_to_baseline(), (env.base.fds, env.fds())


def test_abor_during_retr_and_session_carries_on(env: Env) -> None:
    script = """
import ftplib, sys
ftp = ftplib.FTP(sys.argv[1], timeout=10)
ftp.login("lab", "lab")
conn = ftp.transfercmd("RETR f.bin")
conn.recv(1024)
reply = ftp.abort()
conn.close()
if reply.startswith("426"):  # the aborted transfer's reply, then the ABOR's own
    reply = ftp.getresp()
print("ABOR", reply.split()[0])
print("NOOP", ftp.voidcmd("NOOP").split()[0])
"""
    out = env.lab.run("cli", ["python3", "-c", script, str(env.pyftpd.address)], timeout=30)
    assert out.returncode == 0, out.stderr
    assert "NOOP 200" in out.stdout and "ABOR 2" in out.stdout
    assert wait_until(lambda: len(env.named("data_finished")) == 1, 10)  # the aborted one
    (finished,) = env.named("data_finished")
    (accepted,) = env.named("data_accepted")
    assert finished["data_plane"] == env.plane and finished["conn"] == accepted["conn"]
    assert 1024 <= finished["bytes_to_client"] <= 8 << 20, finished  # the client read 1024
    assert finished["result"] != "ok", finished  # it closed with unread data: a reset
    assert env.fds_back_to_baseline(), (env.base.fds, env.fds())
    if env.kernel:
        assert no_pinholes(env.lab), pinhole_elements(env.lab)


@pytest.mark.parametrize("victim", ["client", "server"])
def test_peer_dies_mid_transfer(env: Env, victim: str, tmp_path: Path) -> None:
    """The client is killed (its socket resets: the transfer ends with an error) or the server
    (a plain EOF: the transfer ends "ok", short of the file) in the middle of a 64 MiB download
    read at 4 MB/s, well past the ~12 MiB that socket buffers (and the relay's pipe) hold;
    ftpalg reports what really moved and frees every descriptor (relay) or pinhole (kernel)."""
    size = 64 << 20
    if victim == "server":  # a disposable server on its own address
        srv = start_server(env.lab, "pyftpdlib", env.lab.addresses.servers_v4[2])
    else:
        srv = env.pyftpd
    if not (srv.root / "big.bin").exists():
        make_file(srv.root, "big.bin", size)
    url = f"ftp://lab:lab@{srv.address}/big.bin"
    curl = env.lab.popen("cli", ["curl", "-s", "--limit-rate", "4M", "-o", "/dev/null", url])

    # the relay holds the data connection's descriptors while it runs; the kernel plane has
    # none (its evidence of a running transfer is the conntrack NEW event: data_accepted)
    def running() -> bool:
        return bool(env.named("data_accepted")) and (env.kernel or env.fds() > env.base.fds)

    assert wait_until(running, 10)
    time.sleep(0.5)
    assert not env.named("data_finished")  # mid-transfer
    if victim == "server":
        srv.stop()
    else:
        curl.kill()
    curl.wait(20)
    assert wait_until(lambda: bool(env.named("data_finished")), 15)
    (finished,) = env.named("data_finished")
    assert finished["data_plane"] == env.plane, finished
    assert 0 < finished["bytes_to_client"] < size, finished
    if victim == "client":
        assert finished["result"] != "ok", finished
    assert wait_until(lambda: len(env.named("session_closed")) == 1, 10)
    assert env.fds_back_to_baseline(), (env.base.fds, env.fds())
    if env.kernel:
        assert no_pinholes(env.lab), pinhole_elements(env.lab)
    assert env.alg.proc.poll() is None
    env.healthy(tmp_path)


def test_data_port_range_exhausted_refuses_with_500(env: Env) -> None:
    gw = env.lab.addresses.gw_outside_v4
    taken = []
    for port in (45000, 45001, 40123):
        s = env.lab.socket("gw")
        s.bind((str(gw), port))
        s.listen()
        taken.append(s)
    try:
        me = env.lab.addresses.client_v4
        numbers = ",".join([*str(me).split("."), str(40123 >> 8), str(40123 & 255)])
        replies = env.client(str(env.pyftpd.address), *login(), f"PORT {numbers}\\r\\n")
        assert replies[-1].startswith("500 Illegal PORT command: no free data port")
        assert len(env.named("no_data_port")) == 1
        seen = env.base.server_log(env.pyftpd)
        assert "<- PASS" in seen and "<- PORT" not in seen  # the server never saw it
    finally:
        for s in taken:
            s.close()


# ---- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["third", "gateway", "port22", "port25"])
def test_bounce_and_low_ports_refused_server_never_sees_it(env: Env, target: str) -> None:
    a = env.lab.addresses
    host, port = {
        "third": ("198.51.100.7", 4000),
        "gateway": (str(a.gw_inside_v4), 4000),
        "port22": (str(a.client_v4), 22),
        "port25": (str(a.client_v4), 25),
    }[target]
    numbers = ",".join([*host.split("."), str(port >> 8), str(port & 255)])
    eprt = f"EPRT |1|{host}|{port}|\\r\\n"
    replies = env.client(
        str(env.pyftpd.address), *login(), f"PORT {numbers}\\r\\n", eprt, "NOOP\\r\\n"
    )
    assert replies[-3].startswith("500 Illegal PORT") and replies[-2].startswith("500 Illegal")
    assert replies[-1].startswith("200")  # the session carries on
    assert len(env.named("command_refused")) == 2
    seen = env.base.server_log(env.pyftpd)
    assert "<- NOOP" in seen and "<- PORT" not in seen and "<- EPRT" not in seen


def test_data_connection_theft_rejected_real_client_succeeds(env: Env) -> None:
    """Another host on the client's network connects to the announced port first. The relay
    accepts and closes it at once (`data_theft_refused`); the kernel plane's pinhole is bound
    to the client's address, so the thief's SYN matches no gate and the forward chain drops
    it (no answer). Either way the expectation stays and the real client gets the file."""
    # The thief's SYN leaves first (a non-blocking connect sends it at once), the client's
    # right after, so neither waits for the other (the expectation lives only 2 s); the
    # thief's fate is read after the transfer.
    code = """
import errno, ftplib, hashlib, select, socket, sys
ftp = ftplib.FTP(sys.argv[1], timeout=10)
ftp.login("lab", "lab")
ftp.voidcmd("TYPE I")
host, port = ftplib.parse227(ftp.sendcmd("PASV"))
thief = socket.socket()
thief.bind((sys.argv[2], 0))
thief.setblocking(False)
assert thief.connect_ex((host, port)) == errno.EINPROGRESS
data = socket.create_connection((host, port), timeout=10)
ftp.putcmd("RETR f.bin")
ftp.getresp()
body = b""
while chunk := data.recv(65536):
    body += chunk
print("SHA", hashlib.sha256(body).hexdigest(), ftp.voidresp().split()[0])
if not select.select([], [thief], [], 1)[1]:
    print("THIEF unanswered")  # its SYN (and every retransmission) dropped
elif err := thief.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
    print("THIEF", errno.errorcode[err])
else:
    thief.settimeout(5)
    print("THIEF", repr(thief.recv(10)))  # b'' : closed at once by ftpalg
"""
    # a second host on the client's network tries the announced port first
    third = f"10.{env.lab.addresses.subnet}.1.3"
    env.lab.run("cli", ["ip", "addr", "replace", f"{third}/24", "dev", env.lab.ifnames.client])
    out = env.lab.run("cli", ["python3", "-c", code, str(env.pyftpd.address), third], timeout=40)
    assert out.returncode == 0, out.stderr
    assert f"SHA {env.digest} 226" in out.stdout
    assert wait_until(lambda: len(env.named("data_finished")) == 1, 10)
    (accepted,) = env.named("data_accepted")  # only the real client's connection
    assert accepted["peer"].startswith(f"{env.lab.addresses.client_v4}:"), accepted
    (finished,) = env.named("data_finished")
    assert (finished["bytes_to_client"], finished["result"]) == (8 << 20, "ok"), finished
    if env.kernel:
        # the kernel dropped its SYN; ftpalg never sees it, so there is no data_theft_refused
        # line on this plane (it would need a log rule for SYNs to an open pinhole's face
        # and port from another peer: issue 12 notes)
        assert "THIEF unanswered" in out.stdout
        assert no_pinholes(env.lab), pinhole_elements(env.lab)
    else:
        assert "THIEF b''" in out.stdout  # connected, then closed at once by ftpalg
        (theft,) = env.named("data_theft_refused")
        assert theft["peer"].startswith(f"{third}:"), theft


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ("@long 1000000", "500 Command rejected: line longer than 4096"),
        ("NOOP \\x00\\r\\n", "500 Command rejected: NUL byte"),
    ],
)
def test_long_line_and_nul_end_the_session(
    env: Env, line: str, expect: str, tmp_path: Path
) -> None:
    replies = env.client(str(env.pyftpd.address), line)
    assert replies[-1].startswith(expect)
    (violation,) = env.named("protocol_violation")
    assert violation["side"] == "client", violation
    env.healthy(tmp_path)


def test_slowloris_line_timeout(env: Env) -> None:
    sock = env.lab.socket("cli")
    sock.settimeout(10)
    sock.connect((str(env.pyftpd.address), 21))
    assert sock.recv(200).startswith(b"220")
    start = time.monotonic()
    reply = b""
    for byte in b"USER lab-trickling":
        try:
            sock.send(bytes([byte]))
        except OSError:
            break
        time.sleep(0.3)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            reply += sock.recv(200)
        sock.setblocking(True)
        if reply:
            break
    sock.close()
    assert reply.startswith(b"421 Command line not completed in time"), reply
    assert 1.5 < time.monotonic() - start < 6
    assert wait_until(lambda: len(env.named("session_closed")) == 1, 5)


def test_pasv_flood_leaves_no_descriptors(env: Env) -> None:
    replies = env.client(str(env.pyftpd.address), *login(), *["PASV\\r\\n"] * 300, "NOOP\\r\\n")
    assert sum(r.startswith("227 ") for r in replies) == 300 and replies[-1].startswith("200")
    if env.kernel:  # each replaced expectation's pinhole was closed, not left to time out
        counts = pinhole_elements(env.lab)
        assert max(counts.values()) <= 1, counts
    assert len(env.named("expectation_replaced")) == 299
    assert env.fds_back_to_baseline(), (env.base.fds, env.fds())
    if env.kernel:
        assert wait_until(lambda: len(env.named("session_closed")) == 1, 5)
        assert no_pinholes(env.lab, timeout=1), pinhole_elements(env.lab)


def test_malformed_227_forwarded_and_session_continues(env: Env) -> None:
    replies = env.client(env.scripted, "USER x\\r\\n", "PASV\\r\\n", "NOOP\\r\\n")
    assert replies[2] == "227 Logout.\r\n" and replies[3].startswith("200")
    assert len(env.named("malformed_reply_forwarded")) == 1


def test_escapes_never_reach_the_log_raw_and_pass_never_logged(env: Env) -> None:
    env.client(
        str(env.pyftpd.address),
        "USER lab\\r\\n",
        "PASS sw0rdfish\\r\\n",
        "PORT 1,2\\x1b[31m\\r\\n",
        "EPRT |1|\\x1b]0;pwn\\x07|1|\\r\\n",
        "PORT 1,2,3\\rX\\r\\n",
    )
    assert wait_until(lambda: len(env.named("session_closed")) == 1, 5)
    raw = env.base.log_since()
    assert len(env.named("malformed_command_refused")) >= 2  # the hostile lines were logged
    assert b"\x1b" not in raw and b"\x07" not in raw and b"\r" not in raw
    assert b"sw0rdfish" not in raw
    assert all(line.startswith(b"{") for line in raw.splitlines())  # one event per line


@pytest.mark.parametrize("plane", ["relay", "kernel"])
def test_sigterm_drains_a_running_transfer(plane: str, tmp_path: Path) -> None:
    """SIGTERM while a download runs: ftpalg refuses new sessions, waits for the transfer
    (the relay carries it; on the kernel plane the kernel does and ftpalg waits for its end
    to count it), logs it whole and exits 0."""
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=plane == "kernel")
        srv = start_server(lab, "vsftpd", lab.addresses.server_v4)
        # far more than the socket buffers and the relay's pipe can hold (~12 MiB), so the
        # transfer is still running when SIGTERM arrives: ~3 s at 16 MiB/s
        size = 48 << 20
        digest = make_file(srv.root, "f.bin", size)
        args = ["--listen", "0.0.0.0:21", "--grace-period", "20", *plane_args(plane)]
        alg = start_ftpalg(lab, args)
        out = tmp_path / "f.bin"
        curl = lab.popen(
            "cli",
            ["curl", "-sS", "--limit-rate", "16M", "-o", str(out), f"ftp://{srv.address}/f.bin"],
            stderr=subprocess.PIPE,
        )
        assert wait_until(lambda: bool(alg.named("data_accepted")), 10)
        assert alg.stop(timeout=30) == 0
        assert curl.wait(30) == 0
        assert sha256_file(out) == digest
        assert alg.named("draining")
        (finished,) = alg.named("data_finished")
        assert finished["data_plane"] == plane, finished
        assert (finished["bytes_to_client"], finished["result"]) == (size, "ok"), finished
        assert alg.named("stopped")
    finally:
        lab.close()
