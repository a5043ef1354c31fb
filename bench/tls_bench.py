"""What `tls = terminate` costs: a PROT P download through ftpalg's TLS relay vs a direct one.

    .venv/bin/python bench/tls_bench.py [--size-mib 1024] [--repeat 3]

Two modes, on loopback, with the same certificate and `tls_context.server_context` (TLS 1.3,
AES-GCM as negotiated by OpenSSL):
- `relay`: this process runs `ftpalg.proxy.tls_relay.tls_relay` between a TLS client and a
  plain "server" (a child process sends `--size-mib` MiB in plain, as a legacy server does on
  a PROT P download through ftpalg; the child's TLS client receives and counts them);
- `upstream`: the same with `tls_upstream`: the child's sender is a TLS server and this
  process its TLS client (`tls_bio_leg.py`, memory BIOs), so ftpalg decrypts the server's
  leg and encrypts the client's;
- `direct`: this process is the FTPS server itself: it sends the same bytes over TLS from a
  blocking socket (what a TLS-capable server spends; a direct FTPS transfer).
Reported per mode: wall-clock MB/s (10^6 bytes) and this process's CPU seconds per GiB (user
+ system, getrusage), median over the repeats. The child (TLS client, plain sender) is not
counted. Modes alternate within a run; compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ftpalg.proxy.tls_context import server_context
from ftpalg.proxy.tls_relay import tls_relay

CHILD = r"""
import socket, ssl, sys, threading
size, tls_port, plain_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
def send_plain():
    s = socket.create_connection(("127.0.0.1", plain_port))
    if len(sys.argv) > 4:  # upstream: the sender is a TLS server (ftpalg its TLS client)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(sys.argv[4], sys.argv[5])
        s = server.wrap_socket(s, server_side=True)
    chunk = memoryview(bytes(range(256)) * 4096)
    left = size
    while left:
        left -= s.send(chunk[: min(left, len(chunk))])
    if len(sys.argv) > 4:
        s = s.unwrap()
    s.close()
if plain_port:
    threading.Thread(target=send_plain, daemon=True).start()
c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_port)))
buf = bytearray(1 << 20)
got = 0
try:
    while n := c.recv_into(buf):
        got += n
except (ssl.SSLEOFError, ConnectionResetError):
    pass
print(got)
"""


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def child(size: int, tls_port: int, plain_port: int, *pem: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", CHILD, str(size), str(tls_port), str(plain_port), *pem]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


async def run_relay(
    size: int, ctx: ssl.SSLContext, upstream: tuple[str, str] | None = None
) -> tuple[float, float]:
    """`upstream` (cert, key): the server's leg is TLS too, ftpalg its client (tls_upstream)."""
    loop = asyncio.get_running_loop()
    a, b = listener(), listener()
    proc = child(size, a.getsockname()[1], b.getsockname()[1], *(upstream or ()))
    client, _ = await loop.run_in_executor(None, a.accept)
    server, _ = await loop.run_in_executor(None, b.accept)
    client.setblocking(False)
    server.setblocking(False)
    start, c0 = time.perf_counter(), cpu()
    client_leg = (_upstream_context(), None) if upstream else None
    result = await tls_relay(loop, client, server, ctx, client_leg)
    out, _ = await loop.run_in_executor(None, proc.communicate)
    wall, used = time.perf_counter() - start, cpu() - c0
    assert int(out) == size == result.server_to_client, (out, result)
    a.close()
    b.close()
    return wall, used


def _upstream_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def run_direct(size: int, ctx: ssl.SSLContext) -> tuple[float, float]:
    a = listener()
    proc = child(size, a.getsockname()[1], 0)
    raw, _ = a.accept()
    start, c0 = time.perf_counter(), cpu()
    conn = ctx.wrap_socket(raw, server_side=True)
    chunk = memoryview(bytes(range(256)) * 4096)
    left = size
    while left:
        left -= conn.send(chunk[: min(left, len(chunk))])
    conn.close()
    out, _ = proc.communicate()
    wall, used = time.perf_counter() - start, cpu() - c0
    assert int(out) == size, out
    a.close()
    return wall, used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="tls-bench-"))
    cert, key = work / "cert.pem", work / "key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    argv += ["-subj", "/CN=bench", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(argv, check=True, capture_output=True)
    ctx = server_context(str(cert), str(key))
    import uvloop

    results: dict[str, list[tuple[float, float]]] = {"relay": [], "upstream": [], "direct": []}
    for _ in range(args.repeat):
        results["relay"].append(uvloop.run(run_relay(size, ctx)))
        results["upstream"].append(uvloop.run(run_relay(size, ctx, (str(cert), str(key)))))
        results["direct"].append(run_direct(size, ctx))
    gib = size / (1 << 30)
    for mode, runs in results.items():
        mbs = statistics.median(size / wall / 1e6 for wall, _ in runs)
        cpu_gib = statistics.median(used / gib for _, used in runs)
        print(f"{mode:8s} {mbs:8.0f} MB/s  {cpu_gib:6.2f} CPU s/GiB  ({args.size_mib} MiB)")


if __name__ == "__main__":
    main()
