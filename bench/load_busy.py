"""NOOP round trips on one control session while another session downloads: a program run
inside the lab's client namespace; prints one JSON line.

    load_busy.py HOST PORT --file big.bin --count K [--idle] [--pasv] [--honour-pasv]

How this works (stdlib only, like `bench/load.py`): the measuring session logs in and warms
up first. Then a second process (this file with `--download`) logs in on a session of its
own and downloads `--file` in binary mode, again and again, reading the data connection with
`recv_into` into a 1 MiB buffer and throwing the bytes away; it prints `flowing` once the
first data bytes arrived. Only then do the K timed NOOP round trips start (blocking socket,
TCP_NODELAY, perf_counter_ns, as in `load.py latency`). After the K-th the downloader is
told to stop (a line on its stdin); it finishes the transfer it is in, checks that every
transfer had the file's size, and reports bytes and seconds. With `--idle` there is no
downloader: the same K round trips on an idle gateway, the reference.

Between two downloads (226, EPSV, RETR) a NOOP can see no load for a moment; with the
bench's 1 GiB file that is about a millisecond per second of load, and `transfers` says how
many there were. Output: NOOP percentiles in microseconds, `max_us`, `n`, and for the
download `download_bytes`, `download_seconds` (first data byte to the end of the last
transfer), `download_mbps`.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import socket
import statistics
import subprocess
import sys
import time

EPSV_RE = re.compile(rb"\(([^\d])\1\1(\d+)\1\)")
PASV_RE = re.compile(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")
BUF = 1 << 20


class Control:
    """A blocking FTP control connection that reads whole (multi-line) replies."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.reply()  # banner

    def reply(self) -> bytes:
        line = self.f.readline()
        if len(line) < 4:
            raise ConnectionError(f"short reply {line!r}")
        if line[3:4] == b"-":
            end = line[:3] + b" "
            while not (more := self.f.readline()).startswith(end):
                if not more:
                    raise ConnectionError("EOF in a multi-line reply")
        return line

    def send(self, cmd: bytes) -> None:
        self.sock.sendall(cmd + b"\r\n")

    def cmd(self, cmd: bytes, want: bytes) -> bytes:
        self.send(cmd)
        line = self.reply()
        if not line.startswith(want):
            raise ConnectionError(f"{cmd.split()[0].decode()}: {line!r}")
        return line

    def login(self) -> None:
        self.cmd(b"USER anonymous", b"331")
        self.cmd(b"PASS bench@example.com", b"230")

    def close(self) -> None:
        try:
            self.cmd(b"QUIT", b"221")
        finally:
            self.sock.close()


def download(args: argparse.Namespace) -> None:
    """The load: download --file until a line arrives on stdin; print a JSON line."""
    c = Control(args.host, args.port)
    c.login()
    c.cmd(b"TYPE I", b"200")
    size = int(c.cmd(b"SIZE " + args.file.encode(), b"213").split()[1])
    buf = memoryview(bytearray(BUF))
    total = transfers = 0
    t0 = None
    while True:
        if args.pasv:
            m = PASV_RE.search(c.cmd(b"PASV", b"227"))
            if m is None:
                raise ConnectionError("unparsable 227")
            host = ".".join(m.group(i).decode() for i in range(1, 5))
            host = host if args.honour_pasv else args.host
            port = int(m.group(5)) * 256 + int(m.group(6))
        else:
            m = EPSV_RE.search(c.cmd(b"EPSV", b"229"))
            if m is None:
                raise ConnectionError("unparsable 229")
            host, port = args.host, int(m.group(2))
        data = socket.create_connection((host, port), timeout=30)
        c.cmd(b"RETR " + args.file.encode(), b"150")
        got = 0
        while n := data.recv_into(buf):
            got += n
            if t0 is None:
                t0 = time.perf_counter()
                print("flowing", flush=True)
        data.close()
        if not c.reply().startswith(b"226"):
            raise ConnectionError("no 226 after RETR")
        if got != size:
            raise ConnectionError(f"transfer {transfers + 1}: {got} of {size} bytes")
        total += got
        transfers += 1
        if select.select([sys.stdin], [], [], 0)[0]:
            break
    seconds = time.perf_counter() - (t0 or 0.0)
    c.close()
    print(json.dumps({"bytes": total, "seconds": seconds, "transfers": transfers}), flush=True)


def measure(args: argparse.Namespace) -> dict[str, object]:
    c = Control(args.host, args.port)
    c.login()
    for _ in range(args.warmup):
        c.cmd(b"NOOP", b"200")
    loader = None
    if not args.idle:
        argv = [sys.executable, __file__, args.host, str(args.port), "--download"]
        argv += ["--file", args.file, *(["--pasv"] if args.pasv else [])]
        argv += ["--honour-pasv"] if args.honour_pasv else []
        loader = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert loader.stdin is not None and loader.stdout is not None
        if loader.stdout.readline().strip() != "flowing":
            raise SystemExit(f"downloader failed (exit {loader.wait()})")
    samples = []
    for _ in range(args.count):
        t0 = time.perf_counter_ns()
        c.send(b"NOOP")
        line = c.reply()
        samples.append((time.perf_counter_ns() - t0) / 1000)
        if not line.startswith(b"200"):
            raise SystemExit(f"NOOP answered {line!r}")
    c.close()
    q = statistics.quantiles(samples, n=1000, method="inclusive")
    out: dict[str, object] = {
        "n": len(samples),
        "p50_us": statistics.median(samples),
        "p90_us": q[899],
        "p99_us": q[989],
        "p999_us": q[998],
        "max_us": max(samples),
        "mean_us": statistics.fmean(samples),
    }
    if loader is not None:
        assert loader.stdin is not None and loader.stdout is not None
        loader.stdin.write("stop\n")
        loader.stdin.close()
        result = loader.stdout.readline()
        if loader.wait(timeout=600) != 0 or not result:
            raise SystemExit(f"downloader failed (exit {loader.returncode})")
        dl = json.loads(result)
        out |= {
            "download_bytes": dl["bytes"],
            "download_seconds": dl["seconds"],
            "download_mbps": dl["bytes"] / dl["seconds"] / 1e6,
            "transfers": dl["transfers"],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="NOOP latency while another session downloads")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--file", default="big.bin")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--idle", action="store_true", help="no download: the reference")
    p.add_argument("--pasv", action="store_true")
    p.add_argument("--honour-pasv", action="store_true")
    p.add_argument("--download", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.download:
        download(args)
    else:
        print(json.dumps(measure(args)), flush=True)


if __name__ == "__main__":
    main()
