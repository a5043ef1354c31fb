"""FTP load generator, run as a program inside the lab's client namespace; prints JSON lines.

How this works (stdlib + uvloop only, so it starts fast and needs no package import):

- `sessions HOST PORT --workers N --duration S`: N asyncio workers, each running complete
  sessions back to back for S seconds: connect, read the banner, USER/PASS (anonymous), EPSV
  (or PASV with `--pasv`; `--honour-pasv` connects to the 227 address instead of the control
  address), connect the data channel, LIST, read it to EOF, read the 226, QUIT. Prints
  `{"sessions", "errors", "seconds", "rate", "first_error"}`; a session that fails counts as
  an error, not as a session.
- `latency HOST PORT --count K`: one logged-in control connection (blocking socket,
  TCP_NODELAY); after a warm-up, K `NOOP` round trips timed with perf_counter_ns. Prints
  percentiles in microseconds.
- `idle HOST PORT --count C`: raises its own fd limit, opens C control connections (at most
  `--in-flight` handshakes at a time) and waits for every banner; prints a `banners` line and
  then waits for a line on stdin. On `noop` every session sends NOOP and waits for its reply
  (a `noop` line is printed); on `quit` (or EOF) all connections close and it exits.

Replies are read as FTP replies: multi-line ones (`230-` ... `230 `) are read to their end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import socket
import statistics
import sys
import time

EPSV_RE = re.compile(rb"\(([^\d])\1\1(\d+)\1\)")
PASV_RE = re.compile(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


async def reply(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    if len(line) < 4:
        raise ConnectionError(f"short reply {line!r}")
    if line[3:4] == b"-":
        end = line[:3] + b" "
        while True:
            more = await reader.readline()
            if not more:
                raise ConnectionError("EOF in a multi-line reply")
            if more.startswith(end):
                break
    return line


async def command(w: asyncio.StreamWriter, r: asyncio.StreamReader, text: str, want: str) -> bytes:
    w.write(text.encode() + b"\r\n")
    line = await reply(r)
    if not line.startswith(want.encode()):
        raise ConnectionError(f"{text.split()[0]}: {line!r}")
    return line


async def one_session(args: argparse.Namespace) -> None:
    r, w = await asyncio.open_connection(args.host, args.port)
    try:
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not (await reply(r)).startswith(b"220"):
            raise ConnectionError("no 220 banner")
        await command(w, r, "USER anonymous", "331")
        await command(w, r, "PASS bench@example.com", "230")
        if args.pasv:
            m = PASV_RE.search(await command(w, r, "PASV", "227"))
            if m is None:
                raise ConnectionError("unparsable 227")
            host = ".".join(m.group(i).decode() for i in range(1, 5))
            host = host if args.honour_pasv else args.host
            port = int(m.group(5)) * 256 + int(m.group(6))
        else:
            m = EPSV_RE.search(await command(w, r, "EPSV", "229"))
            if m is None:
                raise ConnectionError("unparsable 229")
            host, port = args.host, int(m.group(2))
        dr, dw = await asyncio.open_connection(host, port)
        await command(w, r, "LIST", "150")
        while await dr.read(65536):
            pass
        dw.close()
        if not (await reply(r)).startswith(b"226"):
            raise ConnectionError("no 226 after LIST")
        await command(w, r, "QUIT", "221")
    finally:
        w.close()


async def sessions(args: argparse.Namespace) -> dict[str, object]:
    done = errors = 0
    first_error = None
    deadline = time.perf_counter() + args.duration

    async def worker() -> None:
        nonlocal done, errors, first_error
        while time.perf_counter() < deadline:
            try:
                await asyncio.wait_for(one_session(args), 10)
                done += 1
            except (TimeoutError, OSError, ConnectionError) as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.workers)))
    seconds = time.perf_counter() - start
    return {
        "sessions": done,
        "errors": errors,
        "seconds": seconds,
        "rate": done / seconds,
        "first_error": first_error,
    }


def latency(args: argparse.Namespace) -> dict[str, object]:
    s = socket.create_connection((args.host, args.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")

    def rt(cmd: bytes) -> bytes:
        s.sendall(cmd)
        line = f.readline()
        while line[3:4] == b"-" or not line[:3].isdigit():
            line = f.readline()
        return line

    f.readline()  # banner (vsftpd/proxies: one line)
    rt(b"USER anonymous\r\n")
    rt(b"PASS bench@example.com\r\n")
    for _ in range(args.warmup):
        rt(b"NOOP\r\n")
    samples = []
    for _ in range(args.count):
        t0 = time.perf_counter_ns()
        line = rt(b"NOOP\r\n")
        samples.append((time.perf_counter_ns() - t0) / 1000)
        if not line.startswith(b"200"):
            raise SystemExit(f"NOOP answered {line!r}")
    rt(b"QUIT\r\n")
    s.close()
    q = statistics.quantiles(samples, n=100)
    return {
        "n": len(samples),
        "p50_us": statistics.median(samples),
        "p90_us": q[89],
        "p99_us": q[98],
        "mean_us": statistics.fmean(samples),
        "min_us": min(samples),
    }


async def idle(args: argparse.Namespace) -> None:
    want = args.count + 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE: the hard limit is all there is
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gate = asyncio.Semaphore(args.in_flight)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0
    first_error = None

    async def open_one() -> None:
        nonlocal failed, first_error
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 60)
                if not (await asyncio.wait_for(reply(r), 60)).startswith(b"220"):
                    raise ConnectionError("no 220 banner")
                conns.append((r, w))
            except (TimeoutError, OSError, ConnectionError) as exc:
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"

    t0 = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(args.count)))
    emit(
        {
            "event": "banners",
            "ok": len(conns),
            "failed": failed,
            "seconds": time.perf_counter() - t0,
            "first_error": first_error,
        }
    )
    loop = asyncio.get_running_loop()
    while (line := (await loop.run_in_executor(None, sys.stdin.readline)).strip()) == "noop":
        t0 = time.perf_counter()

        async def noop(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
            async with gate:
                try:
                    w.write(b"NOOP\r\n")
                    return (await asyncio.wait_for(reply(r), 60)).startswith(b"200")
                except (TimeoutError, OSError, ConnectionError):
                    return False

        ok = sum(await asyncio.gather(*(noop(r, w) for r, w in conns)))
        emit(
            {
                "event": "noop",
                "ok": ok,
                "failed": len(conns) - ok,
                "seconds": time.perf_counter() - t0,
            }
        )
    for _r, w in conns:
        w.close()
    emit({"event": "closed", "last": line})


def emit(obj: dict[str, object]) -> None:
    print(json.dumps(obj), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description="FTP load generator for the ftpalg benchmarks")
    p.add_argument("what", choices=["sessions", "latency", "idle"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--pasv", action="store_true")
    p.add_argument("--honour-pasv", action="store_true")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--in-flight", type=int, default=200)
    args = p.parse_args()
    if args.what == "latency":
        emit(latency(args))
        return
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        if args.what == "sessions":
            emit(runner.run(sessions(args)))
        else:
            runner.run(idle(args))


if __name__ == "__main__":
    main()
