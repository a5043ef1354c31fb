"""Logs a troubleshooter needs (issue 16 item 8), through real servers and clients on a
closed gateway: the command/reply trace of `--log-level debug` (PASS masked), failed logins
(log line and counter), and `data_finished`'s `result` (and the xferlog's completion status,
and the error counter) following the transfer's final reply — on both data planes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import make_file
from tests.lab.conftest import Baseline, ServerPool, baseline, start_lab
from tests.lab.test_operations_lab import moved, scrape

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

# One client session, doing one thing; prints what the client saw, as JSON.
CLIENT = r"""
import ftplib, json, socket, sys
host, user, password, what = sys.argv[1:5]
ftp = ftplib.FTP()
ftp.connect(host, 21, timeout=15)
seen = {}
if what == "bad-password":
    try:
        ftp.login(user, "wrong-" + password)
    except ftplib.error_perm as exc:
        seen["reply"] = str(exc)
    ftp.close()
else:
    ftp.login(user, password)
    ftp.voidcmd("TYPE I")
    if what == "active":
        ftp.set_pasv(False)
    if what == "missing":  # passive: ftplib connects first, then sends RETR: 550
        try:
            ftp.transfercmd("RETR no-such-file.bin")
        except ftplib.error_perm as exc:
            seen["reply"] = str(exc)
    elif what == "cancel":  # read a little, close the data connection: the server fails
        conn = ftp.transfercmd("RETR big.bin")
        seen["got"] = len(conn.recv(65536))
        conn.close()
        seen["reply"] = ftp.getmultiline()  # a 4xx: read, not raised
    else:  # a whole download, 226
        seen["reply"] = ftp.retrbinary("RETR small.bin", lambda data: None)
    ftp.quit()
print(json.dumps(seen))
"""


@dataclass
class Gateway:
    lab: Lab
    alg: AlgProcess
    servers: ServerPool
    xferlog: Path

    def client(self, what: str) -> dict[str, Any]:
        srv = self.servers.get("pyftpdlib")
        argv = ["python3", "-c", CLIENT, str(srv.address), srv.user or "", srv.password or "", what]
        run = self.lab.run("cli", argv, timeout=60)
        assert run.returncode == 0, run.stderr
        out: dict[str, Any] = json.loads(run.stdout)
        return out


@pytest.fixture(scope="module", params=["relay", "kernel"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    plane = request.param
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=plane == "kernel")
        xferlog = tmp_path_factory.mktemp("xferlog") / "xferlog"
        args = ["--listen", "0.0.0.0:21", "--data-plane", plane, "--log-level", "debug"]
        args += ["--metrics", "127.0.0.1:9121", "--xferlog", str(xferlog)]
        alg = start_ftpalg(lab, args)
        servers = ServerPool(lab)
        srv = servers.get("pyftpdlib")
        make_file(srv.root, "small.bin", 1000)
        make_file(srv.root, "big.bin", 64 << 20)
        yield Gateway(lab, alg, servers, xferlog)
    finally:
        lab.close()


@pytest.fixture
def since(gw: Gateway) -> Baseline:
    return baseline(gw.alg)


def finished(since: Baseline, count: int = 1) -> list[dict[str, Any]]:
    assert wait_until(lambda: len(since.named("data_finished")) >= count, 15), since.alg.tail()
    return since.named("data_finished")


def xferlog_status(gw: Gateway, name: str) -> list[str]:
    """The completion status (last field) of the xferlog lines for file `name`."""
    if not gw.xferlog.exists():
        return []
    return [x.split()[-1] for x in gw.xferlog.read_text().splitlines() if x.split()[8] == name]


def test_debug_traces_every_control_line_with_pass_masked(gw: Gateway, since: Baseline) -> None:
    srv = gw.servers.get("pyftpdlib")
    seen = gw.client("active")  # PORT: a command ftpalg changes on its way
    assert seen["reply"].startswith("226")
    finished(since)
    assert wait_until(lambda: bool(since.named("session_closed")), 10)
    (opened,) = since.named("session_opened")
    commands, replies = since.named("command"), since.named("reply")
    assert {e["session"] for e in commands + replies} == {opened["session"]}
    assert all(e["level"] == "debug" for e in commands + replies)
    lines = [e["line"] for e in commands]
    assert lines[:2] == [f"USER {srv.user}\\r\\n", "PASS ****\\r\\n"]
    assert f"PASS {srv.password}".encode() not in since.log_since()
    (port,) = [e for e in commands if e["line"].startswith("PORT")]
    client_v4 = str(gw.lab.addresses.client_v4).replace(".", ",")
    outside_v4 = str(gw.lab.addresses.gw_outside_v4).replace(".", ",")
    assert port["line"].startswith(f"PORT {client_v4},")
    assert port["sent"].startswith(f"PORT {outside_v4},")  # the line as the server got it
    assert "sent" not in commands[0]  # unchanged lines carry only the line
    assert lines[-1] == "QUIT\\r\\n" and any(line.startswith("RETR") for line in lines)
    codes = [e["line"][:3] for e in replies]
    assert codes[0] == "220" and "331" in codes and "230" in codes and codes[-1] == "221"
    assert "226" in codes and any(code[:1] == "1" for code in codes)  # 125 or 150


def test_failed_login_is_logged_and_counted(gw: Gateway, since: Baseline) -> None:
    srv = gw.servers.get("pyftpdlib")
    before = scrape(gw.lab)
    seen = gw.client("bad-password")
    assert seen["reply"].startswith("530")
    assert wait_until(lambda: bool(since.named("login_failed")), 10), gw.alg.tail()
    (failed,) = since.named("login_failed")
    assert failed["level"] == "info"
    assert (failed["command"], failed["user"]) == ("PASS", srv.user)
    assert failed["reply"] == seen["reply"]
    assert "session" in failed
    assert moved(before, scrape(gw.lab), "ftpalg_login_failures_total") == 1


def test_a_550_to_retr_is_the_data_connections_result(gw: Gateway, since: Baseline) -> None:
    before = scrape(gw.lab)
    seen = gw.client("missing")
    assert seen["reply"].startswith("550")
    (ended,) = finished(since)
    assert (ended["command"], ended["path"]) == ("RETR", "no-such-file.bin")
    assert ended["result"] == ended["reply"] == seen["reply"]
    assert ended["level"] == "warning"
    assert wait_until(lambda: xferlog_status(gw, "no-such-file.bin") == ["i"], 5)
    time.sleep(0.2)  # the metrics follow the same observation
    assert moved(before, scrape(gw.lab), "ftpalg_relay_errors_total") == 1


def test_a_failed_download_takes_the_servers_final_reply(gw: Gateway, since: Baseline) -> None:
    """The client closes the data connection mid-transfer: ftpalg sees the data connection
    end first, the server's 4xx after it; `reply` is the reply the client got, and the
    result is not `ok` (that reply, or the data connection's error when it had one)."""
    seen = gw.client("cancel")
    assert seen["got"] > 0 and seen["reply"][:1] in "45", seen
    (ended,) = finished(since)
    assert ended["command"] == "RETR" and ended["bytes_to_client"] < 64 << 20
    assert ended["reply"] == seen["reply"], ended
    assert ended["result"] != "ok", ended  # the reply, or the data connection's own error
    assert wait_until(lambda: xferlog_status(gw, "big.bin") == ["i"], 5)


def test_a_complete_download_stays_ok(gw: Gateway, since: Baseline) -> None:
    earlier = len(xferlog_status(gw, "small.bin"))  # the trace test downloads it too
    seen = gw.client("passive")
    (ended,) = finished(since)
    assert ended["result"] == "ok" and ended["reply"] == seen["reply"]
    assert ended["reply"].startswith("226") and ended["bytes_to_client"] == 1000
    assert wait_until(lambda: xferlog_status(gw, "small.bin")[earlier:] == ["c"], 5)
