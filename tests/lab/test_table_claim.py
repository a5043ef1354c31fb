"""One ftpalg per table and network namespace (`ftpalg/kernel/claim.py`), and what the kernel
data plane needs in reverse mode (docs/data-plane.md):

- a second transparent instance refuses to start (one line) and the first keeps working;
- a reverse-mode instance next to it: `auto` uses the relay with a warning naming the owner,
  `kernel` refuses to start;
- a SIGKILLed owner leaves no lock behind: the next instance starts and replaces the table;
- reverse mode with forwarding off: `auto` uses the relay (warning names the sysctl),
  `kernel` refuses to start.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpalg.lab.alg import start_ftpalg
from ftpalg.lab.clients import FtpTarget, run_transfer
from ftpalg.lab.gateway import apply_closed_gateway
from ftpalg.lab.netns import Lab, wait_until
from ftpalg.lab.servers import FtpServer, make_file, start_server
from tests.lab.conftest import start_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

OWNED = "another ftpalg instance owns nftables table inet ftpalg in this network namespace"


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = start_lab()
    try:
        apply_closed_gateway(lab, pinholes=True)
        yield lab
    finally:
        lab.close()


def refused(lab: Lab, args: list[str]) -> str:
    """Run ftpalg on the gateway expecting exit status 1 and one line on stderr."""
    run = lab.run("gw", [sys.executable, "-m", "ftpalg", *args], timeout=30)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1, (run.returncode, run.stderr)
    return lines[0]


def fetch(lab: Lab, target: FtpTarget, digest: str, out: Path) -> None:
    result = run_transfer(lab, "curl-epsv", target, "f.bin", out)
    assert result.ok and result.sha256 == digest, result.detail


def serve_file(lab: Lab) -> tuple[FtpServer, str]:
    server = start_server(lab, "vsftpd", lab.addresses.servers_v4[1])
    return server, make_file(server.root, "f.bin", 1 << 20, seed=11)


def test_a_second_instance_on_the_same_table(lab: Lab, tmp_path: Path) -> None:
    server, digest = serve_file(lab)
    first = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "kernel"])
    assert refused(lab, ["--listen", "0.0.0.0:2121"]) == f"ftpalg: {OWNED}"
    # reverse mode on the gateway's outside address, next to the transparent owner
    a = lab.addresses
    reverse = ["--listen", f"{a.gw_outside_v4}:2100", "--upstream", f"{server.address}:21"]
    line = refused(lab, [*reverse, "--data-plane", "kernel"])
    assert line == f"ftpalg: data_plane kernel: {OWNED}", line
    second = start_ftpalg(lab, [*reverse, "--data-plane", "auto"])
    assert second.named("started")[0]["data_plane"] == "relay"
    (warning,) = second.named("data_plane_relay")
    assert warning["reason"] == OWNED
    via_reverse = FtpTarget(a.gw_outside_v4, 2100, server.user, server.password)
    fetch(lab, via_reverse, digest, tmp_path / "reverse.bin")
    second.stop()
    # the owner still diverts and still carries data on the kernel plane
    mark = first.mark()
    fetch(lab, server.target, digest, tmp_path / "first.bin")
    assert wait_until(lambda: bool(first.named("data_finished", since=mark)), 10)
    (ended,) = first.named("data_finished", since=mark)
    assert ended["data_plane"] == "kernel" and ended["bytes_to_client"] == 1 << 20


def test_a_killed_owner_leaves_no_lock(lab: Lab, tmp_path: Path) -> None:
    server, digest = serve_file(lab)
    first = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "kernel"])
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    left = lab.run("gw", ["nft", "list", "table", "inet", "ftpalg"])
    assert left.returncode == 0, "a killed ftpalg cannot remove its table"
    second = start_ftpalg(lab, ["--listen", "0.0.0.0:21", "--data-plane", "kernel"])
    assert second.named("started")[0]["data_plane"] == "kernel"
    fetch(lab, server.target, digest, tmp_path / "f.bin")


@pytest.mark.parametrize("plane", ["auto", "kernel"])
def test_reverse_mode_with_forwarding_off(lab: Lab, plane: str, tmp_path: Path) -> None:
    server, digest = serve_file(lab)
    lab.sysctl("gw", "net.ipv4.ip_forward", 0)
    a = lab.addresses
    args = ["--listen", f"{a.gw_outside_v4}:21", "--upstream", f"{server.address}:21"]
    args += ["--data-plane", plane]
    why = "net.ipv4.ip_forward is off: in reverse mode the kernel data plane forwards"
    if plane == "kernel":
        assert refused(lab, args).startswith(f"ftpalg: data_plane kernel: {why}")
        return
    alg = start_ftpalg(lab, args)
    assert alg.named("started")[0]["data_plane"] == "relay"
    (warning,) = alg.named("data_plane_relay")
    assert str(warning["reason"]).startswith(why), warning
    target = FtpTarget(a.gw_outside_v4, 21, server.user, server.password)
    fetch(lab, target, digest, tmp_path / "f.bin")


def test_reverse_sessions_the_kernel_cannot_join_use_the_relay(lab: Lab, tmp_path: Path) -> None:
    """Reverse mode on the kernel plane: an IPv4 client outside is carried by the kernel; an
    IPv6 client of the IPv4 server and a client on the gateway itself are relayed (nftables
    cannot join IPv6 to IPv4; a local client's packets never pass prerouting)."""
    server, digest = serve_file(lab)
    a = lab.addresses
    listen = ["--listen", f"{a.gw_outside_v4}:2100", "--listen", f"[{a.gw_outside_v6}]:2100"]
    upstream = ["--upstream", f"{server.address}:21"]
    alg = start_ftpalg(lab, [*listen, *upstream, "--data-plane", "kernel"])
    assert alg.named("started")[0]["data_plane"] == "kernel"
    cases = [("cli", a.gw_outside_v4, "kernel"), ("cli", a.gw_outside_v6, "relay")]
    cases.append(("gw", a.gw_outside_v4, "relay"))
    for n, (role, host, plane) in enumerate(cases):
        lab.client_role = role
        mark = alg.mark()
        target = FtpTarget(host, 2100, server.user, server.password)
        fetch(lab, target, digest, tmp_path / f"{n}.bin")
        assert wait_until(lambda m=mark: bool(alg.named("data_finished", since=m)), 10)
        (ended,) = alg.named("data_finished", since=mark)
        assert (ended["data_plane"], ended["bytes_to_client"]) == (plane, 1 << 20), (role, host)


def test_reverse_mode_without_root_relays(lab: Lab, tmp_path: Path) -> None:
    """`auto` in reverse mode started without root (forwarding is on): the kernel set-up
    fails, the relay carries, a warning says why; nothing of ftpalg's is left in nftables."""
    server, digest = serve_file(lab)
    a = lab.addresses
    nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    args = ["--listen", f"{a.gw_outside_v4}:2100", "--upstream", f"{server.address}:21"]
    alg = start_ftpalg(lab, args, wrapper=(*nobody, "--inh-caps=-all"))
    assert alg.named("started")[0]["data_plane"] == "relay"
    (warning,) = alg.named("data_plane_relay")
    assert str(warning["reason"]).startswith("kernel setup failed:"), warning
    assert lab.run("gw", ["nft", "list", "table", "inet", "ftpalg"]).returncode != 0
    target = FtpTarget(a.gw_outside_v4, 2100, server.user, server.password)
    fetch(lab, target, digest, tmp_path / "f.bin")


def test_cleanup_after_a_kill(lab: Lab) -> None:
    """`ftpalg cleanup` refuses while ftpalg runs; after a SIGKILL it removes exactly what
    the killed instance left (table, rule, route), not another tool's rule."""
    serve_file(lab)
    lab.run("gw", ["ip", "rule", "add", "fwmark", "0x4", "lookup", "400"], check=True)
    alg = start_ftpalg(lab, ["--listen", "0.0.0.0:21"])
    cleanup = [sys.executable, "-m", "ftpalg", "cleanup"]
    busy = lab.run("gw", cleanup, timeout=30)
    assert busy.returncode == 1 and "it is running; stop it instead" in busy.stderr, busy
    alg.proc.send_signal(signal.SIGKILL)
    alg.proc.wait(10)
    done = lab.run("gw", cleanup, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "ftpalg: removed table inet ftpalg, 1 routing rule(s), 1 route(s)"
    ), done.stdout
    rules = lab.run("gw", ["ip", "rule"]).stdout
    assert "lookup 100" not in rules and "fwmark 0x4 lookup 400" in rules, rules
    again = lab.run("gw", cleanup, timeout=30)
    assert again.stdout.strip() == "ftpalg: nothing of ftpalg's in the kernel", again.stdout


READ_ONLY_SYSCTLS = (
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"',
    "sh",
)


def test_read_only_sysctls_under_auto_relay(lab: Lab, tmp_path: Path) -> None:
    """As in a container, /proc/sys is read-only: the conntrack sysctls the kernel data
    plane needs cannot be set. `auto` relays (warning), `kernel` refuses to start."""
    server, digest = serve_file(lab)
    args = ["--listen", "0.0.0.0:21"]
    alg = start_ftpalg(lab, args, wrapper=READ_ONLY_SYSCTLS)
    assert alg.named("started")[0]["data_plane"] == "relay"
    (warning,) = alg.named("data_plane_relay")
    assert str(warning["reason"]).startswith("kernel data plane:"), warning
    fetch(lab, server.target, digest, tmp_path / "f.bin")
    alg.stop()
    argv = [*READ_ONLY_SYSCTLS, sys.executable, "-m", "ftpalg", *args, "--data-plane", "kernel"]
    run = lab.run("gw", argv, timeout=30)
    assert run.returncode == 1 and run.stderr.startswith("ftpalg: kernel setup failed:"), run
