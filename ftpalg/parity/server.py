"""The scripted FTP server of the differential suite (run in the lab's server namespace).

    python -m ftpalg.parity.server CORPUS.json

How this works. It listens on port 21 of every address (IPv4 and IPv6), prints `ready` and
serves each connection in a thread: send `220`, read the first line (`USER <tag>.<id>`, which
names the case; answered `331`), then record every byte received after it, with its arrival
time. Each complete line received afterwards is answered: for a server case the first one (the
client's PASV/EPSV) gets the case's segments — each sent with its own `send()` with
TCP_NODELAY, 0.2 s apart, so each starts a TCP segment on a line boundary — every other line
gets `200 ok`. When its stdin
closes it prints {"<tag>.<id>": [[time.time(), base64 chunk], ...]} (the bytes received after
the USER line) as JSON and exits; connections still open are reported as they stand.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
import time
from typing import Any

GAP = 0.2
OK = b"200 ok\r\n"


class Recorder:
    def __init__(self, cases: dict[str, dict[str, Any]]) -> None:
        self.cases = cases
        self.lock = threading.Lock()
        self.received: dict[str, list[tuple[float, bytes]]] = {}

    def serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(30)
        try:
            conn.sendall(b"220 parity server\r\n")
            self._serve(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        while b"\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        first, _, rest = bytes(buf).partition(b"\n")
        key = first.split(b" ", 1)[-1].strip().decode("latin-1")
        case = self.cases.get(key.partition(".")[2], {})
        with self.lock:
            record = self.received.setdefault(key, [])
        conn.sendall(b"331 ok\r\n")
        pending = bytearray()
        answered = False
        data = rest
        while True:
            if data:
                with self.lock:
                    record.append((time.time(), data))
            pending += data
            while b"\n" in pending:
                del pending[: pending.index(b"\n") + 1]
                if case.get("side") == "server" and not answered:
                    self._reply(conn, case["segments"])
                    answered = True
                else:
                    conn.sendall(OK)
            data = conn.recv(65536)
            if not data:
                return

    @staticmethod
    def _reply(conn: socket.socket, segments: list[str]) -> None:
        for i, segment in enumerate(segments):
            if i:
                time.sleep(GAP)
            conn.sendall(segment.encode("latin-1"))

    def report(self) -> dict[str, list[tuple[float, str]]]:
        with self.lock:
            return {
                key: [(t, base64.b64encode(chunk).decode()) for t, chunk in chunks]
                for key, chunks in self.received.items()
            }


def _listen(recorder: Recorder, family: int, host: str) -> None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, 21))
    sock.listen(512)

    def loop() -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=recorder.serve, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as f:
        corpus = json.load(f)
    recorder = Recorder({c["id"]: c for c in corpus["cases"]})
    _listen(recorder, socket.AF_INET, "0.0.0.0")
    _listen(recorder, socket.AF_INET6, "::")
    print("ready", flush=True)
    sys.stdin.read()  # the runner closes our stdin when the run is over
    json.dump(recorder.report(), sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
