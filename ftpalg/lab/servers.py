"""Real FTP servers (pyftpdlib, vsftpd, pure-ftpd) inside the lab's server namespace.

How this works: each `start_*` function makes a private work directory (`root/` with the files
to serve, `root/upload/` writable by the server's upload user), starts the daemon in the
foreground through `lab.popen("srv", ...)` with stderr going to a file, and waits until its
control port accepts a TCP connection made from inside the server namespace. A daemon that
exits or never listens raises `ServerStartError` carrying its stderr/log. The returned
`FtpServer` knows its address, port, credentials (None = anonymous), the FTP paths for
downloads (`name`) and uploads (`upload/name`), and which client addresses its logs show.
`stop()` (also run when the lab closes) kills the daemon's process group and deletes the work
directory. Several servers can run at once on the server namespace's .10-.13 / ::10-::13.

pure-ftpd serves anonymous users from `~ftp` only; we give it a private mount namespace in
which our root is bind-mounted over `~ftp` (nothing is mounted outside that process tree).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ftpalg.lab.netns import IPAddress, Lab
from ftpalg.lab.server_base import (
    FtpServer,
    ServerStartError,
    ServerUnavailable,
    launch,
    make_file,
    need_ftp_user,
    private_binary,
    sha256_file,
    workdir,
)

__all__ = [
    "SERVERS",
    "FtpServer",
    "ServerStartError",
    "ServerUnavailable",
    "make_file",
    "pure_ftpd_path",
    "sha256_file",
    "start_pure_ftpd",
    "start_pyftpdlib",
    "start_server",
    "start_vsftpd",
    "vsftpd_path",
]


def start_pyftpdlib(
    lab: Lab,
    address: IPAddress | None = None,
    port: int = 21,
    user: str | None = "lab",
    password: str = "lab",
    ready_timeout: float = 10.0,
    max_cons: int | None = None,
) -> FtpServer:
    """pyftpdlib: `user` may read and write everywhere; anonymous may read.

    `max_cons` raises pyftpdlib's connection limit (default 512) and the server's fd limit.
    """
    address = address or lab.addresses.server_v4
    work, root, upload = workdir(lab, "pyftpd", None)
    lo, hi = lab.next_port_range()
    argv = [
        sys.executable,
        "-m",
        "ftpalg.lab.pyftpd_server",
        "--address",
        str(address),
        "--port",
        str(port),
        "--root",
        str(root),
        "--passive-ports",
        f"{lo}-{hi}",
    ]
    if user:
        argv += ["--user", user, "--password", password]
    if max_cons:
        argv += ["--max-cons", str(max_cons)]
    info = dict(
        address=address,
        port=port,
        root=root,
        upload_dir=upload,
        user=user,
        password=password if user else None,
        passive_ports=(lo, hi),
        workdir=work,
    )
    return launch(lab, "pyftpdlib", argv, info, ready_timeout)


def vsftpd_path() -> str:
    path = os.environ.get("FTPALG_VSFTPD") or shutil.which("vsftpd") or "/usr/sbin/vsftpd"
    if not os.access(path, os.X_OK):
        raise ServerUnavailable("vsftpd is not installed (apt-get install vsftpd)")
    return path


def self_signed(work: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for a lab FTPS server (openssl, one day)."""
    cert, key = work / "cert.pem", work / "key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    argv += ["-subj", "/CN=ftpalg-lab", "-keyout", str(key), "-out", str(cert)]
    try:
        subprocess.run(argv, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerUnavailable(f"cannot make a certificate with openssl: {exc}") from exc
    return cert, key


def start_vsftpd(
    lab: Lab,
    address: IPAddress | None = None,
    port: int = 21,
    ready_timeout: float = 10.0,
    tls: bool = False,
    passive: bool = True,
) -> FtpServer:
    """vsftpd, anonymous only (any password): download from root, upload into upload/.
    `passive=False`: pasv_enable=NO (PASV and EPSV refused; only active mode works).
    `tls`: explicit FTPS required for logins and data (AUTH TLS, PROT P), with vsftpd's
    default require_ssl_reuse (a data connection must resume the control one's session)."""
    binary = vsftpd_path()
    need_ftp_user()
    address = address or lab.addresses.server_v4
    work, root, upload = workdir(lab, "vsftpd", "ftp")
    empty = work / "empty"
    empty.mkdir(mode=0o755)
    lo, hi = lab.next_port_range()
    listen = (
        ["listen=NO", "listen_ipv6=YES", f"listen_address6={address}"]
        if address.version == 6
        else ["listen=YES", "listen_ipv6=NO", f"listen_address={address}"]
    )
    conf = [
        *listen,
        f"listen_port={port}",
        "background=NO",
        "seccomp_sandbox=NO",
        "anonymous_enable=YES",
        "local_enable=NO",
        "no_anon_password=NO",
        "write_enable=YES",
        "anon_upload_enable=YES",
        "anon_mkdir_write_enable=YES",
        "anon_umask=022",
        f"anon_root={root}",
        "ftp_username=ftp",
        "nopriv_user=ftp",
        f"secure_chroot_dir={empty}",
        f"pasv_enable={'YES' if passive else 'NO'}",
        f"pasv_min_port={lo}",
        f"pasv_max_port={hi}",
        "port_enable=YES",
        "connect_from_port_20=YES",
        "xferlog_enable=YES",
        "xferlog_std_format=NO",
        "log_ftp_protocol=YES",
        f"vsftpd_log_file={work / 'vsftpd.log'}",
        "syslog_enable=NO",
        "dual_log_enable=NO",
        "max_clients=0",
        "max_per_ip=0",
        "hide_ids=NO",
        "use_localtime=NO",
    ]
    if tls:
        cert, key = self_signed(work)
        conf += [
            "ssl_enable=YES",
            "allow_anon_ssl=YES",
            "force_anon_logins_ssl=YES",
            "force_anon_data_ssl=YES",
            "ssl_tlsv1=YES",  # vsftpd 3.0.3: any TLS version (OpenSSL negotiates 1.2+)
            "ssl_sslv2=NO",
            "ssl_sslv3=NO",
            f"rsa_cert_file={cert}",
            f"rsa_private_key_file={key}",
        ]
    conf_path = work / "vsftpd.conf"
    conf_path.write_text("\n".join(conf) + "\n")
    info = dict(
        address=address,
        port=port,
        root=root,
        upload_dir=upload,
        user=None,
        password=None,
        passive_ports=(lo, hi),
        workdir=work,
        log_files=[work / "vsftpd.log"],
    )
    return launch(lab, "vsftpd", [binary, str(conf_path)], info, ready_timeout)


def pure_ftpd_path() -> str:
    return private_binary("pure-ftpd", "FTPALG_PURE_FTPD")


def start_pure_ftpd(
    lab: Lab, address: IPAddress | None = None, port: int = 21, ready_timeout: float = 10.0
) -> FtpServer:
    """pure-ftpd, anonymous only: download from root, upload into upload/ (owned by ftp)."""
    binary = pure_ftpd_path()
    need_ftp_user()
    if missing := [t for t in ("unshare", "mount", "sh") if shutil.which(t) is None]:
        raise ServerUnavailable("pure-ftpd lab server needs: " + ", ".join(missing))
    home = pwd.getpwnam("ftp").pw_dir
    if not os.path.isdir(home):
        raise ServerUnavailable(f"~ftp ({home}) is not a directory; pure-ftpd needs it")
    address = address or lab.addresses.server_v4
    work, root, upload = workdir(lab, "pureftpd", "ftp")
    lo, hi = lab.next_port_range()
    xfer_log = work / "transfer.log"
    daemon = [
        binary,
        "-S",
        f"{address},{port}",
        "-p",
        f"{lo}:{hi}",
        "-e",
        "-M",
        "-j",
        "-A",
        "-H",
        "-d",
        "-O",
        f"clf:{xfer_log}",
    ]
    script = 'mount --bind "$0" "$1" && shift && exec "$@"'
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        str(root),
        home,
        *daemon,
    ]
    info = dict(
        address=address,
        port=port,
        root=root,
        upload_dir=upload,
        user=None,
        password=None,
        passive_ports=(lo, hi),
        workdir=work,
        log_files=[xfer_log],
    )
    return launch(lab, "pure-ftpd", argv, info, ready_timeout)


SERVERS: dict[str, Callable[..., FtpServer]] = {
    "pyftpdlib": start_pyftpdlib,
    "vsftpd": start_vsftpd,
    "vsftpd-tls": lambda lab, address, port: start_vsftpd(lab, address, port, tls=True),
    "pure-ftpd": start_pure_ftpd,
}


def start_server(
    lab: Lab, kind: str, address: IPAddress | None = None, port: int = 21
) -> FtpServer:
    """Start a server by kind name: 'pyftpdlib', 'vsftpd' or 'pure-ftpd'."""
    try:
        fn = SERVERS[kind]
    except KeyError:
        raise ValueError(f"unknown server kind {kind!r}; one of {sorted(SERVERS)}") from None
    server: FtpServer = fn(lab, address, port)
    return server
