"""A pyftpdlib FTP server for the lab, run as a subprocess inside the server namespace.

How this works: `python -m ftpalg.lab.pyftpd_server --address A --port 21 --root DIR
--passive-ports LO-HI [--user U --password P]` serves DIR read-only to anonymous users and,
with --user, read-write (all permissions) to that user. It refuses data connections to foreign
addresses (`permit_foreign_addresses=False`), so a PORT/EPRT that names an address other than
the control connection's peer is rejected with 501 — what an ALG must get right (the EPRT
address is compared in canonical form, working around pyftpdlib issue #373, so the kernel's
uncompressed IPv6 form is accepted). IPv4 and IPv6 addresses both work. pyftpdlib logs
every session (with the peer address) to stderr; `FtpServer.seen_clients()` reads it back.
`--max-cons N` raises pyftpdlib's connection limit (default 512) and this process's open-file
limit to match (for the benchmarks' thousands of idle sessions).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import resource
import signal
import sys
from types import FrameType

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def _port_range(text: str) -> range:
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ftpalg.lab.pyftpd_server", description=__doc__)
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--root", required=True)
    p.add_argument("--passive-ports", type=_port_range, default=range(40000, 40100))
    p.add_argument("--user")
    p.add_argument("--password", default="")
    p.add_argument("--no-anonymous", action="store_true")
    p.add_argument("--max-cons", type=int, default=0, help="connection limit (0: pyftpdlib's)")
    args = p.parse_args(argv)

    authorizer = DummyAuthorizer()
    if args.user:
        authorizer.add_user(args.user, args.password, args.root, perm="elradfmwMT")
    if not args.no_anonymous:
        authorizer.add_anonymous(args.root)

    # A subclass, so the class attributes set below stay local to this server.
    class LabHandler(FTPHandler):  # type: ignore[misc]
        def _make_eport(self, ip: str, port: int) -> None:
            # pyftpdlib compares the EPRT address with the peer as *strings*, so the kernel's
            # uncompressed `|2|2001:0db8:...|` form counts as "foreign" (pyftpdlib issue #373).
            # Compare canonical forms instead; foreign addresses are still refused.
            with contextlib.suppress(ValueError):
                ip = str(ipaddress.ip_address(ip))
            super()._make_eport(ip, port)

    LabHandler.authorizer = authorizer
    LabHandler.passive_ports = args.passive_ports
    LabHandler.permit_foreign_addresses = False
    LabHandler.banner = "ftpalg lab pyftpdlib ready."

    # FTPALG_LAB_LOG_COMMANDS=1: log every command received ("<- PORT ...") for tests that
    # must prove what the server saw
    level = logging.DEBUG if os.environ.get("FTPALG_LAB_LOG_COMMANDS") == "1" else logging.INFO
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(message)s"
    )
    server = FTPServer((args.address, args.port), LabHandler)
    if args.max_cons:
        server.max_cons = args.max_cons
        want = 2 * args.max_cons + 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want:  # raising the hard limit needs CAP_SYS_RESOURCE; else take the hard one
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
            except (ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # serve_forever() closes all sockets on the way out

    signal.signal(signal.SIGTERM, _stop)
    print(f"listening on {args.address} port {args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
