"""A one-transfer Python ftplib client for the lab, run inside the client namespace.

How this works: `python -m ftpalg.lab.ftplib_client --host H [--port 21] [--user U --password P]
--passive|--active (--download REMOTE LOCAL | --upload LOCAL REMOTE) [--timeout S]` logs in
(anonymous without --user), switches passive mode with `set_pasv()` (ftplib picks EPSV/EPRT by
itself on IPv6), transfers in binary mode while hashing the bytes, and prints one JSON line:
`{"ok", "sha256", "bytes", "seconds", "error", "replies"}`. The exit code is 0 only on success.
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import json
import sys
import time
from typing import Any


def _transfer(args: argparse.Namespace, replies: list[str]) -> tuple[str, int]:
    digest = hashlib.sha256()
    count = 0
    ftp = ftplib.FTP(timeout=args.timeout)
    try:
        replies.append(ftp.connect(args.host, args.port))
        if args.user:
            replies.append(ftp.login(args.user, args.password))
        else:
            replies.append(ftp.login())
        ftp.set_pasv(args.passive)
        if args.download:
            remote, local = args.download
            with open(local, "wb") as f:

                def write(block: bytes) -> None:
                    nonlocal count
                    f.write(block)
                    digest.update(block)
                    count += len(block)

                replies.append(ftp.retrbinary(f"RETR {remote}", write, blocksize=1 << 16))
        else:
            local, remote = args.upload

            def sent(block: bytes) -> None:
                nonlocal count
                digest.update(block)
                count += len(block)

            with open(local, "rb") as src:
                replies.append(ftp.storbinary(f"STOR {remote}", src, 1 << 16, sent))
        replies.append(ftp.quit())
    finally:
        ftp.close()
    return digest.hexdigest(), count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ftpalg.lab.ftplib_client", description=__doc__)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--user")
    p.add_argument("--password", default="")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--passive", dest="passive", action="store_true")
    mode.add_argument("--active", dest="passive", action="store_false")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--download", nargs=2, metavar=("REMOTE", "LOCAL"))
    what.add_argument("--upload", nargs=2, metavar=("LOCAL", "REMOTE"))
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)

    replies: list[str] = []
    start = time.monotonic()
    report: dict[str, Any] = {"ok": False, "sha256": None, "bytes": 0, "error": None}
    try:
        digest, count = _transfer(args, replies)
        report.update(ok=True, sha256=digest, bytes=count)
    except (OSError, EOFError, ftplib.Error) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    report["seconds"] = round(time.monotonic() - start, 6)
    report["replies"] = replies
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
