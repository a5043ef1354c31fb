"""The two C peers, run in a lab's gateway namespace: SuSE ftp-proxy and proftpd mod_proxy.

How this works:

- SuSE proxy-suite `ftp-proxy` 1.9.2.4 (Debian package `ftp-proxy`) runs standalone in the
  foreground (`-d -n`), forking one child per session. It is used *transparently*: the gateway
  redirects inside tcp/21 to its port (`apply_redirect`), and `AllowTransProxy yes` makes it
  read the original destination with `SO_ORIGINAL_DST` (verified: `DestinationAddress`, which
  the config must name, is set to an address where nothing listens and is never used). It has
  no EPSV/EPRT: it answers `500` and curl falls back to PASV/PORT. Its 227 names the proxy's
  own address, which curl >= 7.74 ignores by default (it reconnects to the control address,
  the server, and the gateway drops that), so its clients need `--no-ftp-skip-pasv-ip` (and
  the session-rate client honours the 227 address). `ForkLimit` (default 40 sessions/minute)
  is raised so the session-rate test measures the proxy, not its rate limiter.
- ProFTPD 1.3.8 + `mod_proxy` 0.9.x (Debian `proftpd-core` + `proftpd-mod-proxy`, unpacked
  privately into `.lab-tools/proftpd` by `bench/setup.sh`, because proftpd conflicts with
  vsftpd) has no transparent interception: it runs as a *reverse* proxy
  (`ProxyRole reverse`) listening on the gateway's inside address, and the client connects to
  it there. `mod_tls` must be loaded before `mod_proxy`. Forks one child per session.

Both write their logs into a private work directory; the lab stops them (process group) when
it closes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ftpalg.lab.netns import IPAddress, Lab, LabError, wait_until

REPO = Path(__file__).resolve().parents[1]
SUSE_BIN = "/usr/sbin/ftp-proxy"
PROFTPD_ROOT = REPO / ".lab-tools" / "proftpd"
PROXY_PORT = 2121


def suse_available() -> str | None:
    """None when SuSE ftp-proxy can run here, else why not."""
    if Path(SUSE_BIN).exists():
        return None
    return "ftp-proxy not installed (apt-get install ftp-proxy)"


def proftpd_available() -> str | None:
    binary = PROFTPD_ROOT / "usr/sbin/proftpd"
    module = PROFTPD_ROOT / "usr/lib/proftpd/mod_proxy.so"
    if binary.exists() and module.exists():
        return None
    return "proftpd + mod_proxy not unpacked into .lab-tools/proftpd (run bench/setup.sh)"


def _start(lab: Lab, argv: list[str], work: Path, address: IPAddress, port: int) -> Any:
    with open(work / "stdout.log", "wb") as out:
        proc = lab.popen("gw", argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    lab.on_close(lambda: shutil.rmtree(work, ignore_errors=True))
    up = wait_until(
        lambda: proc.poll() is not None or lab.can_connect("gw", address, port, 0.5), 10
    )
    if proc.poll() is not None or not up:
        tail = (work / "stdout.log").read_text(errors="replace")[-2000:]
        raise LabError(f"{argv[0]} did not start (rc {proc.poll()}): {tail}")
    return proc


def start_suse(lab: Lab, max_clients: int = 512) -> Any:
    """SuSE ftp-proxy on the gateway, intercepting inside tcp/21 through REDIRECT."""
    from ftpalg.lab.gateway import apply_redirect

    work = Path(tempfile.mkdtemp(prefix=f"{lab.id}-suse-"))
    a = lab.addresses
    decoy = a.servers_v4[-1]  # nothing listens there: proves the transparent look-up is used
    conf = work / "ftp-proxy.conf"
    conf.write_text(
        "[-Global-]\n"
        f"DestinationAddress {decoy}\n"
        f"Listen {a.gw_inside_v4}\n"
        f"Port {PROXY_PORT}\n"
        "AllowTransProxy yes\n"
        "ServerType standalone\n"
        f"LogDestination {work}/ftp-proxy.log\n"
        "LogLevel WRN\n"
        f"MaxClients {max_clients}\n"
        "ForkLimit 1000000\n"
        "TimeOut 900\n"
    )
    apply_redirect(lab, PROXY_PORT)
    return _start(lab, [SUSE_BIN, "-d", "-n", "-f", str(conf)], work, a.gw_inside_v4, PROXY_PORT)


def start_proftpd(lab: Lab, backend: IPAddress, max_instances: int = 1000) -> Any:
    """ProFTPD mod_proxy as a reverse proxy on gw_inside:PROXY_PORT for ftp://backend:21."""
    from ftpalg.lab.gateway import apply_closed_gateway

    work = Path(tempfile.mkdtemp(prefix=f"{lab.id}-proftpd-"))
    work.chmod(0o755)
    (work / "tables").mkdir()
    a = lab.addresses
    lo, hi = lab.next_port_range(1000)
    conf = work / "proftpd.conf"
    conf.write_text(
        f"ModulePath {PROFTPD_ROOT}/usr/lib/proftpd\n"
        "LoadModule mod_tls.c\n"  # must come before mod_proxy
        "LoadModule mod_proxy.c\n"
        "ServerType standalone\n"
        'ServerName "ftpalg bench mod_proxy"\n'
        "DefaultServer on\n"
        f"Port {PROXY_PORT}\n"
        f"DefaultAddress {a.gw_inside_v4}\n"
        "SocketBindTight on\n"
        "UseIPv6 off\n"
        "User nobody\n"
        "Group nogroup\n"
        f"MaxInstances {max_instances}\n"
        "UseReverseDNS off\n"
        "WtmpLog off\n"
        f"PidFile {work}/proftpd.pid\n"
        f"ScoreboardFile {work}/proftpd.scoreboard\n"
        "DelayTable none\n"
        f"SystemLog {work}/system.log\n"
        "TransferLog none\n"
        f"PassivePorts {lo} {hi}\n"
        "<IfModule mod_proxy.c>\n"
        "  ProxyEngine on\n"
        "  ProxyRole reverse\n"
        f"  ProxyReverseServers ftp://{backend}:21\n"
        f"  ProxyTables {work}/tables\n"
        f"  ProxyLog {work}/proxy.log\n"
        "  ProxyTLSEngine off\n"
        "  ProxyDataTransferPolicy client\n"
        "</IfModule>\n"
    )
    apply_closed_gateway(lab)
    binary = str(PROFTPD_ROOT / "usr/sbin/proftpd")
    return _start(lab, [binary, "-n", "-c", str(conf)], work, a.gw_inside_v4, PROXY_PORT)
