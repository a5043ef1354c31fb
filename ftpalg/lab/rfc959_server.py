"""A pure RFC 959 FTP server for the lab: the pyftpdlib server of `pyftpd_server.py` with
`EPSV` and `EPRT` (RFC 2428) removed, so it answers them `500 Command not understood` — the
legacy server that data-mode conversion (docs/conversion.md) must fall back to PASV/PORT for.

`python -m ftpalg.lab.rfc959_server` takes pyftpd_server's arguments; `start_rfc959()` starts
it in the lab's server namespace like `servers.start_pyftpdlib()`.
"""

from __future__ import annotations

import sys

from pyftpdlib.handlers import FTPHandler

from ftpalg.lab import pyftpd_server
from ftpalg.lab.addresses import IPAddress
from ftpalg.lab.netns import Lab
from ftpalg.lab.server_base import FtpServer, launch, workdir


def main() -> int:
    for command in ("EPSV", "EPRT"):
        FTPHandler.proto_cmds.pop(command, None)  # shared by every handler subclass
    return pyftpd_server.main()


def start_rfc959(lab: Lab, address: IPAddress, ready_timeout: float = 10.0) -> FtpServer:
    """The server on `address`:21; user `lab`/`lab` may read and write, anonymous may read."""
    work, root, upload = workdir(lab, "rfc959", None)
    lo, hi = lab.next_port_range()
    argv = [sys.executable, "-m", "ftpalg.lab.rfc959_server", "--address", str(address)]
    argv += ["--port", "21", "--root", str(root), "--passive-ports", f"{lo}-{hi}"]
    argv += ["--user", "lab", "--password", "lab"]
    info = dict(
        address=address,
        port=21,
        root=root,
        upload_dir=upload,
        user="lab",
        password="lab",
        passive_ports=(lo, hi),
        workdir=work,
    )
    return launch(lab, "pyftpdlib", argv, info, ready_timeout)


if __name__ == "__main__":
    sys.exit(main())
