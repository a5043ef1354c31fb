"""Tiny scripted FTP peers for hostile-input tests (run inside lab namespaces).

`python -m ftpalg.lab.scripted server ADDR PORT` is an FTP "server" that answers every
command from a fixed table (PASV gets `227 Logout.`, the malformed reply the kernel stalls
on); `client HOST PORT LINE...` sends raw lines (Python escapes allowed, e.g. `\\x1b`) one at
a time, waiting for a reply to each, and prints every reply as JSON; `@sleep S` pauses and
`@long N` sends a command line of N bytes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time

REPLIES = {
    b"USER": b"331 Any password.\r\n",
    b"PASS": b"230 Logged in.\r\n",
    b"PASV": b"227 Logout.\r\n",
    b"EPSV": b"229 Entering Extended Passive Mode |||6446|\r\n",
    b"NOOP": b"200 NOOP ok.\r\n",
    b"QUIT": b"221 Bye.\r\n",
}


def serve(address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.create_server((address, port), family=family, reuse_port=False)
    while True:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 scripted server.\r\n")
            for line in lines:
                verb = line.split(b" ", 1)[0].strip().upper()
                conn.sendall(REPLIES.get(verb, b"502 Not implemented.\r\n"))
                if verb == b"QUIT":
                    break


def client(host: str, port: int, lines: list[str]) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    replies = [sock.recv(4096).decode("latin-1")]
    for text in lines:
        if text.startswith("@sleep "):
            time.sleep(float(text.split()[1]))
            continue
        if text.startswith("@long "):
            data = b"NOOP " + b"x" * int(text.split()[1]) + b"\r\n"
        else:
            data = text.encode("latin-1").decode("unicode_escape").encode("latin-1")
        try:
            sock.sendall(data)
        except OSError as exc:  # the peer may close before taking it all: read its reply
            replies.append(f"send error: {exc}")
        try:
            replies.append(sock.recv(4096).decode("latin-1"))
        except OSError as exc:
            replies.append(f"error: {exc}")
    print(json.dumps(replies))


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"]:
        serve(argv[1], int(argv[2]))
    elif argv[:1] == ["client"]:
        client(argv[1], int(argv[2]), argv[3:])
    else:
        print("usage: scripted server ADDR PORT | client HOST PORT LINE...", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
