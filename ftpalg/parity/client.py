"""The scripted FTP client of the differential suite (run in the lab's client namespace).

    python -m ftpalg.parity.client CORPUS.json --tag k [--only id,id] [--window 2]

How this works. The corpus file (written by the runner) holds the server's addresses and the
rendered cases. Every case gets its own control connection to the server's port 21 (through
the gateway), all cases concurrently in threads. Per case: read the 220 banner, send
`USER <tag>.<id>` and wait for the reply — the kernel never parses the first line in each
direction, and the server learns which case this connection is — then, with TCP_NODELAY:

- a client case: send each segment with one `send()` (so each is its own TCP segment,
  starting on a line boundary the kernel remembers), 0.2 s apart; with `"wait": true` (the
  seq-ledger run) wait for one reply line after each segment instead;
- a server case: send `PASV` or `EPSV`; the server answers with the case's segments.

Then everything that arrives within the time box (`--window` seconds after the last send) is
recorded, and the connection is reset (the kernel may have stalled it for good). The result is
one JSON object on stdout: {id: {"rx": base64 bytes after the USER reply, "error": text,
"closed_at": time.time() of the reset}} — the server's bytes that arrive later are "late".
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

GAP = 0.2  # seconds between the segments of a split case
SETUP = 10.0  # seconds for connect, banner and USER reply (not part of the observation)


def _read_line(sock: socket.socket, deadline: float, buf: bytearray) -> bytes | None:
    """One line (through LF) from sock, keeping what follows it in buf; None on timeout/EOF."""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (TimeoutError, OSError):
            return None
        if not data:
            return None
        buf += data
    end = buf.index(b"\n") + 1
    line = bytes(buf[:end])
    del buf[:end]
    return line


def _collect(sock: socket.socket, deadline: float, buf: bytearray) -> None:
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (TimeoutError, OSError):
            return
        if not data:
            return
        buf += data


def _abort(sock: socket.socket) -> None:
    """Close with RST: a stalled connection must not linger retransmitting."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def run_case(case: dict[str, Any], host: str, tag: str, window: float) -> dict[str, Any]:
    family = socket.AF_INET6 if case["v6"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    rx = bytearray()
    error: str | None = None
    try:
        sock.settimeout(SETUP)
        sock.connect((host, 21))
        deadline = time.monotonic() + SETUP
        if _read_line(sock, deadline, buf) is None:
            return {"rx": "", "error": "no banner"}
        sock.sendall(f"USER {tag}.{case['id']}\r\n".encode())
        if _read_line(sock, deadline, buf) is None:
            return {"rx": "", "error": "no reply to USER"}
        segments = [s.encode("latin-1") for s in case["segments"]]
        if case["side"] == "server":
            segments = [case["trigger"].encode()]
        for i, segment in enumerate(segments):
            if i and case.get("wait"):
                rx += _read_line(sock, time.monotonic() + window, buf) or b""
            elif i:
                time.sleep(GAP)
            sock.sendall(segment)
        _collect(sock, time.monotonic() + window, buf)
        rx += buf
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        closed_at = time.time()
        _abort(sock)
    return {"rx": base64.b64encode(bytes(rx)).decode(), "error": error, "closed_at": closed_at}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ftpalg.parity.client")
    ap.add_argument("corpus")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--only", default="", help="comma-separated case ids (default: all)")
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=32)
    args = ap.parse_args(argv)
    with open(args.corpus) as f:
        corpus = json.load(f)
    only = set(filter(None, args.only.split(",")))
    cases = [c for c in corpus["cases"] if not only or c["id"] in only]

    def one(case: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        host = corpus["server_v6"] if case["v6"] else corpus["server_v4"]
        return case["id"], run_case(case, host, args.tag, args.window)

    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        results = dict(pool.map(one, cases))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
