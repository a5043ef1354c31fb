"""`ftpalg lab`'s own flags: the parser (usage errors are one line) and transfer sizes."""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

from ftpalg.lab.servers import SERVERS
from ftpalg.ops.config import DATA_POLICIES

DEFAULT_SIZE = 8 << 20
MAX_SIZE = 16 << 30
EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
_SIZE_RE = re.compile(r"([0-9]+)\s*([kmg]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class UsageError(Exception):
    """A bad `ftpalg lab` flag; the message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message.removeprefix("argument "))


def parse_size(text: str) -> int:
    """Bytes from `1048576`, `64k`, `8M`, `8MiB`, `1G` (k/M/G are powers of 1024)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 8M, 1GiB)")
    size = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if size > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is larger than {MAX_SIZE >> 30} GiB")
    return size


def human_size(size: int) -> str:
    """`8 MiB`, `64 KiB`, `1000 bytes`: exact binary units when they fit."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def build_lab_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ftpalg lab",
        allow_abbrev=False,
        description="Build a client - gateway - server network-namespace lab (root), run real "
        "FTP transfers through ftpalg in transparent mode and print what was rewritten, "
        "whether each transfer arrived intact, and how fast.",
    )
    add = p.add_argument
    add(
        "--server",
        choices=sorted(SERVERS),
        default="pyftpdlib",
        help="FTP server in the server namespace (default pyftpdlib)",
    )
    add(
        "--size",
        type=parse_size,
        default=DEFAULT_SIZE,
        metavar="BYTES",
        help="size of every transfer: bytes, or with k/M/G (default 8M)",
    )
    add(
        "--kernel",
        action="store_true",
        help="also run the matrix through the kernel's nf_conntrack_ftp + nf_nat_ftp and "
        "show both results side by side",
    )
    add(
        "--data-policy",
        choices=DATA_POLICIES,
        default="client",
        help="run ftpalg with this data_policy (docs/conversion.md): e.g. passive converts "
        "every active-mode client to passive upstream, and the table shows the conversions",
    )
    add(
        "--nat64",
        action="store_true",
        help="instead: the NAT64 matrix (docs/nat64.md): an IPv6-only client reaching IPv4-only "
        "servers (pyftpdlib, vsftpd, pure-ftpd, one without EPSV) at 64:ff9b::/96 addresses "
        "through ftpalg --nat64-prefix; curl, lftp, ftplib and wget, sha256 checked",
    )
    add("--quick", action="store_true", help="curl modes only (a smaller matrix)")
    add(
        "--ftps",
        action="store_true",
        help="also explicit FTPS rows: tls passthrough (transparent, vsftpd requiring TLS) "
        "and tls terminate (reverse mode, ftpalg the TLS server in front of the plain server)",
    )
    add(
        "--keep",
        action="store_true",
        help="leave the lab up after the table until Ctrl-C; print how to enter it",
    )
    add(
        "--containers",
        action="store_true",
        help="instead: the compose labs of docker/ (reverse and transparent) in containers; "
        "`ftpalg lab --containers --help` for its own flags",
    )
    return p
