"""`ftpalg lab`: build the namespace lab, run real FTP transfers through ftpalg, print a table.

How this works: `lab_main()` parses its own flags (`build_lab_parser()`), refuses to run
without root (one line, exit 1), then `run_lab()` builds client — gateway — server namespaces
(`netns.Lab`), starts one FTP server per IP version in the server namespace, and runs the
matrix of `matrix.cases()` through the gateway:

- with `--kernel`, first through the kernel's own FTP NAT (`gateway.apply_kernel_nat`: the
  `ftp` conntrack helper + masquerade, forward policy drop), with tcpdump on the gateway's
  inside and outside interfaces to show what `nf_nat_ftp` rewrote;
- then through ftpalg: the gateway's forward path is closed (`apply_closed_gateway`, nothing
  can bypass the proxy) and ftpalg runs in transparent mode on 0.0.0.0:21 and [::]:21,
  installing its TPROXY routing and nftables table.

One progress line per step and per transfer goes to stderr; the table (`table.render`) goes
to stdout. The lab is always torn down — after the run, on an error, on Ctrl-C or SIGTERM —
and teardown itself is not interruptible. A failing step is reported as
`ftpalg lab: <step>: failed: <reason>` (server start errors carry the server's log tail) with
exit 1; a failed transfer makes the exit code 1 after the table. `--keep` leaves everything
running after the table and prints how to enter each namespace until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from ftpalg.kernel.errors import KernelSetupError
from ftpalg.lab import ftps_rows, matrix
from ftpalg.lab.alg import AlgProcess, start_ftpalg
from ftpalg.lab.capture import start_capture
from ftpalg.lab.gateway import apply_closed_gateway, apply_kernel_nat
from ftpalg.lab.lab_flags import (
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
    build_lab_parser,
    human_size,
)
from ftpalg.lab.nat64_matrix import keep_text as nat64_keep_text
from ftpalg.lab.nat64_matrix import run_nat64
from ftpalg.lab.netns import Lab, LabError, lab_unavailable_reason, missing_tools
from ftpalg.lab.server_base import FtpServer
from ftpalg.lab.servers import start_server
from ftpalg.lab.table import Case, Outcome, all_ok, render, render_ftps


class Progress:
    """One line per step and per transfer on `out`; remembers the step for error messages."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out, self.total, self.done = out, total, 0
        self.current = "starting"

    def step(self, text: str) -> None:
        self.current = text
        print(f"ftpalg lab: {text}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A line that is not a step of its own (the current step stays what it was)."""
        print(f"ftpalg lab: {text}", file=self.out, flush=True)

    def transfer(self, path: str, case: Case, outcome: Outcome) -> None:
        self.done += 1
        mbps = f"{outcome.mbps:8.1f} MB/s" if outcome.mbps is not None else ""
        state = "ok  " if outcome.ok else "FAIL"
        line = f"[{self.done:>3}/{self.total}] {path:<6} {case.label:<24} {state} {mbps}"
        if not outcome.ok:
            line += f" {outcome.reason}"
        print(f"ftpalg lab: {line.rstrip()}", file=self.out, flush=True)


@contextlib.contextmanager
def _signals(raising: bool) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt (`raising`) or are ignored.

    Only in this process: pyroute2 forks short-lived children (to make sockets inside a
    namespace) and stops them with SIGTERM; a child that inherited a raising handler would
    unwind through our `finally` and tear the lab down under the parent's feet, one that
    ignored it could hang its parent. A child exits at once instead.
    """
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        if raising:
            raise KeyboardInterrupt

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def lab_main(argv: list[str]) -> int:
    if "--containers" in argv:
        from ftpalg.lab.containers import containers_main

        return containers_main([a for a in argv if a != "--containers"])
    try:
        args = build_lab_parser().parse_args(argv)
    except UsageError as exc:
        print(f"ftpalg lab: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.nat64 and (args.kernel or args.data_policy != "client"):
        print(
            "ftpalg lab: --nat64 runs ftpalg only: no --kernel, no --data-policy", file=sys.stderr
        )
        return EXIT_USAGE
    if os.geteuid() != 0:
        print(
            "ftpalg lab: must run as root (it creates network namespaces and nftables "
            "rules); try: sudo make lab",
            file=sys.stderr,
        )
        return EXIT_FAIL
    tools = ["curl"] if args.quick else ["curl", "lftp"]
    tools += ["wget"] if args.nat64 and not args.quick else []
    tools += ["openssl"] if args.ftps else []
    problem = lab_unavailable_reason() or (
        "missing tools: " + ", ".join(missing_tools(*tools)) if missing_tools(*tools) else None
    )
    if problem:
        print(f"ftpalg lab: {problem}", file=sys.stderr)
        return EXIT_FAIL
    all_cases = matrix.cases(args.quick)
    ftps_cases = ftps_rows.cases(args.quick) if args.ftps else []
    ftps_kernel = sum(c.tls == "passthrough" for c in ftps_cases) if args.kernel else 0
    total = len(all_cases) * (2 if args.kernel else 1) + len(ftps_cases) + ftps_kernel
    progress = Progress(sys.stderr, total)
    try:
        with _signals(raising=True):
            return run_lab(args, all_cases + ftps_cases, progress, sys.stdout)
    except KeyboardInterrupt:
        print("ftpalg lab: interrupted; the lab has been torn down", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (LabError, KernelSetupError, OSError) as exc:
        print(f"ftpalg lab: {progress.current}: failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:  # a bug or a library error: still one line, still torn down
        kind = type(exc).__name__
        print(f"ftpalg lab: {progress.current}: failed: {kind}: {exc}", file=sys.stderr)
        return EXIT_FAIL


def run_lab(
    args: argparse.Namespace, all_cases: list[Case], progress: Progress, out: TextIO
) -> int:
    lab = Lab(prefix="lab")
    progress.step(f"building namespaces {', '.join(lab.namespaces.values())}")
    try:
        lab.start()
        return _run(lab, args, all_cases, progress, out)
    finally:
        with _signals(raising=False):
            if not lab.closed:
                progress.note(f"tearing down lab {lab.id}")
            lab.close()


def _run(
    lab: Lab, args: argparse.Namespace, every_case: list[Case], progress: Progress, out: TextIO
) -> int:
    a = lab.addresses
    all_cases = [c for c in every_case if not c.tls]
    ftps_cases = [c for c in every_case if c.tls]
    lab.sysctl("cli", "net.ipv4.ip_local_port_range", "20000 29999")  # apart from the gateway's
    if args.nat64:
        outcomes, nat_alg = run_nat64(lab, args.size, args.quick, progress.step, progress.note, out)
        if args.keep:
            out.write(nat64_keep_text(lab, nat_alg))
            out.flush()
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    signal.pause()
        return 0 if all(o.ok for o in outcomes) else EXIT_FAIL
    servers: dict[int, FtpServer] = {}
    for version, address in ((4, a.server_v4), (6, a.server_v6)):
        progress.step(f"starting {args.server} on {address} port 21")
        servers[version] = start_server(lab, args.server, address)
    progress.step(f"writing a {human_size(args.size)} test file into the servers' roots")
    digests = matrix.prepare_files(servers, args.size)
    site = None
    if ftps_cases:
        tls_v4, tls_v6 = a.servers_v4[1], a.servers_v6[1]
        progress.step(f"starting vsftpd requiring TLS on {tls_v4} and {tls_v6} port 21")
        site = ftps_rows.start_tls_servers(lab, servers[4], digests[4], args.size)
    results: dict[str, list[Outcome]] = {}
    ftps_results: dict[str, list[Outcome | None]] = {}
    alg: AlgProcess | None = None

    def report_to(path: str) -> Callable[[Case, Outcome], None]:
        def report(case: Case, outcome: Outcome) -> None:
            progress.transfer(path, case, outcome)
            if not outcome.ok:
                server = servers[case.version]
                if site and case.tls == "passthrough":
                    server = site.tls_servers[case.version]
                for line in failure_context(server, alg):
                    progress.note("    " + line)

        return report

    def run(path: str, commands: matrix.Commands) -> list[Outcome]:
        report = report_to(path)
        return matrix.run_matrix(
            lab,
            path,
            servers,
            digests,
            args.size,
            all_cases,
            commands,
            lambda _, c, o: report(c, o),
        )

    if args.kernel:
        progress.step("gateway: kernel path (ct helper ftp + masquerade, forward policy drop)")
        apply_kernel_nat(lab)
        commands = matrix.Commands()
        if not missing_tools("tcpdump"):
            progress.step("starting tcpdump on the gateway's inside and outside interfaces")
            inside = start_capture(lab, "gw", lab.ifnames.gw_inside)
            outside = start_capture(lab, "gw", lab.ifnames.gw_outside)
            commands = matrix.CaptureCommands(inside, outside)
        else:
            progress.step("tcpdump not installed: the kernel's rewrites are shown as '-'")
        results["kernel"] = run(path="kernel", commands=commands)
        if site:
            progress.step("gateway: kernel path, FTPS (ct helper ftp + masquerade, outbound open)")
            ftps_results["kernel"] = ftps_rows.run_kernel(
                lab, site, ftps_cases, report_to("kernel")
            )
    policy = "" if args.data_policy == "client" else f", data_policy {args.data_policy}"
    progress.step(
        f"gateway: forward path closed; starting ftpalg (transparent, 0.0.0.0:21, [::]:21{policy})"
    )
    apply_closed_gateway(lab)
    listen = ["--listen", "0.0.0.0:21", "--listen", "[::]:21"]
    alg = start_ftpalg(lab, [*listen, "--data-policy", args.data_policy])
    _remove_log_with(lab, alg)
    results = {"ftpalg": run("ftpalg", matrix.AlgCommands(alg))} | results
    if site:
        alg.stop()
        ftps_out, alg = ftps_rows.run_ftpalg(
            lab, site, ftps_cases, progress.step, report_to("ftpalg")
        )
        _remove_log_with(lab, alg)
        ftps_results = {"ftpalg": ftps_out} | ftps_results
    out.write(render(all_cases, results))
    if site:
        out.write("\n" + render_ftps(ftps_cases, ftps_results))
    out.flush()
    if args.keep:
        out.write(keep_text(lab, servers, str(alg.log)))
        out.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                signal.pause()
    return 0 if all_ok(results) and all_ok(ftps_results) else EXIT_FAIL


def _remove_log_with(lab: Lab, alg: AlgProcess) -> None:
    log_dir = alg.log.parent
    lab.on_close(lambda: shutil.rmtree(log_dir, ignore_errors=True))


def failure_context(server: FtpServer, alg: AlgProcess | None, lines: int = 4) -> list[str]:
    """After a failed transfer: the server's log tail and ftpalg's latest warnings."""
    out = [f"{server.kind} log: {x}" for x in server.log_text().strip().splitlines()[-lines:]]
    if alg is not None:
        warnings = [e for e in alg.events() if e.get("level") in ("warning", "error")]
        out += [f"ftpalg: {json.dumps(e)}" for e in warnings[-lines:]]
    return out


def keep_text(lab: Lab, servers: dict[int, FtpServer], alg_log: str) -> str:
    """How to use and end a lab left running by --keep."""
    ns, a = lab.namespaces, lab.addresses
    srv = servers[4]
    login = f"-u {srv.user}:{srv.password} " if srv.user else ""
    names = " ".join(ns.values())
    return "\n".join(
        [
            "",
            f"The lab {lab.id} is up; ftpalg runs in the gateway."
            " Press Ctrl-C here to tear it down.",
            f"  client  ({a.client_v4}, {a.client_v6}):  ip netns exec {ns['cli']} bash",
            f"  gateway ({a.gw_inside_v4} | {a.gw_outside_v4}):  ip netns exec {ns['gw']} bash",
            f"  server  ({srv.kind} on {srv.address}, {servers[6].address}):  "
            f"ip netns exec {ns['srv']} bash",
            f"  try:     ip netns exec {ns['cli']} curl {login}-o /dev/null "
            f"ftp://{srv.address}/{matrix.FILE_NAME}",
            f"  look:    ip netns exec {ns['gw']} nft list ruleset; tail -f {alg_log}",
            f"  if this process dies without tearing down:  for n in {names}; do "
            "ip netns pids $n | xargs -r kill; ip netns delete $n; done",
            "",
        ]
    )
