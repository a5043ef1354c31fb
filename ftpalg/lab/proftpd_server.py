"""ProFTPD as a lab FTP server (anonymous: download from root, upload into upload/).

How this works: proftpd conflicts with vsftpd as Debian's `ftp-server`, so scripts/setup.sh
unpacks `proftpd-core` privately into `.lab-tools/proftpd` (the libraries it links against are
installed normally); `FTPALG_PROFTPD` names another binary. `start_proftpd()` writes a
standalone configuration bound to one address only (`SocketBindTight`, `UseIPv6 off` for an
IPv4 address), with an `<Anonymous>` block chrooted into the server's root, uploads allowed
in `upload/` (owned by the `ftp` user), `ExtendedLog` of every command (so tests can see
what the server received), and starts it in the foreground (`-n`) like the other servers.
"""

from __future__ import annotations

from ftpalg.lab.netns import IPAddress, Lab
from ftpalg.lab.server_base import FtpServer, launch, need_ftp_user, private_binary, workdir


def proftpd_path() -> str:
    return private_binary("proftpd", "FTPALG_PROFTPD")


def start_proftpd(
    lab: Lab, address: IPAddress, port: int = 21, ready_timeout: float = 10.0
) -> FtpServer:
    binary = proftpd_path()
    need_ftp_user()
    work, root, upload = workdir(lab, "proftpd", "ftp")
    lo, hi = lab.next_port_range()
    commands = work / "commands.log"
    conf = work / "proftpd.conf"
    conf.write_text(
        "\n".join(
            [
                "ServerType standalone",
                'ServerName "ftpalg lab proftpd"',
                "DefaultServer on",
                f"Port {port}",
                f"DefaultAddress {address}",
                "SocketBindTight on",
                f"UseIPv6 {'on' if address.version == 6 else 'off'}",
                "User nobody",
                "Group nogroup",
                "UseReverseDNS off",
                "WtmpLog off",
                "RequireValidShell off",
                "AllowOverwrite on",
                f"PidFile {work}/proftpd.pid",
                f"ScoreboardFile {work}/proftpd.scoreboard",
                "DelayTable none",
                f"SystemLog {work}/system.log",
                f"TransferLog {work}/xferlog",
                'LogFormat commands "%a %r"',
                f"ExtendedLog {commands} ALL commands",
                f"PassivePorts {lo} {hi}",
                f"<Anonymous {root}>",
                "  User ftp",
                "  Group nogroup",
                "  UserAlias anonymous ftp",
                "  RequireValidShell off",
                "  <Directory upload>",
                "    <Limit STOR>",
                "      AllowAll",
                "    </Limit>",
                "  </Directory>",
                "</Anonymous>",
                "",
            ]
        )
    )
    commands.touch()
    info = dict(
        address=address,
        port=port,
        root=root,
        upload_dir=upload,
        user=None,
        password=None,
        passive_ports=(lo, hi),
        workdir=work,
        log_files=[commands],
    )
    return launch(lab, "proftpd", [binary, "-n", "-c", str(conf)], info, ready_timeout)
