"""`ftpalg lab --containers`: the compose labs of docker/, built and run for real.

How this works: a compose tool (`docker compose`, Debian's `docker-compose` or
`podman-compose`; `--compose`, else the first that has a working engine) builds the three
images of docker/ (ftpalg, vsftpd, the client box) once, through `docker/compose.yaml`, then
brings up two projects side by side, each with fixed addresses:

- `ftpalg-reverse` (`docker/compose.yaml`): client -> ftpalg in reverse mode -> vsftpd on an
  internal network. Passive transfers go through the ports the gateway publishes on the
  host (`FTPALG_PUBLISH_ADDRESS`, default 172.30.1.1, port 2121 and the data ports), which
  is also the address ftpalg announces in its 227 replies; active transfers connect to the
  gateway's own address (a client behind the host's port mapping is NATed, and strict ftpalg
  refuses a PORT naming an address that is not the client's).
- `ftpalg-transparent` (`docker/compose.transparent.yaml`): the client's default route is
  the ftpalg container, which diverts FTP with TPROXY and forwards; the client connects to the
  server's own address.

Each transfer is one curl or lftp run in the client container (passive and active, download
and upload of an 8 MiB file), checked by sha256: a download against the served file, an
upload against the file that arrived at the server. The client and server side of the
announced line come from the gateway's `rewrite` and `announce_unchanged` log events, the
data plane and the byte count from its `data_finished` events; transfers run one at a time,
so the events new since the previous transfer are this transfer's. Progress goes to stderr,
the table to stdout, and both projects are always taken down (containers and networks; the
images are kept), also on an error, Ctrl-C or SIGTERM; `--keep` leaves them up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, TextIO

from ftpalg.lab.command import _signals  # the guard for forked children too
from ftpalg.lab.matrix import ANNOUNCED
from ftpalg.lab.table import grid, reason_line, shorten

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
FILE_SIZE = 8 << 20  # docker/vsftpd/Dockerfile writes /srv/ftp/test.bin of this size
SERVER_ROOT = "/srv/ftp"
TIMEOUT = 60.0  # one transfer
EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
PUBLISH_DEFAULT = "172.30.1.1"  # docker/compose.yaml: ${FTPALG_PUBLISH_ADDRESS:-172.30.1.1}
CURL_FLAGS = {
    "curl-epsv": [],
    "curl-pasv": ["--disable-epsv"],
    "curl-eprt": ["-P", "-"],
    "curl-port": ["-P", "-", "--disable-eprt"],
}
MODES = (*CURL_FLAGS, "lftp-passive", "lftp-active")
PASSIVE = {"curl-epsv", "curl-pasv", "lftp-passive"}


class LabFailure(Exception):
    """A step of the container lab failed; the message says why in one or a few lines."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise LabFailure(message.removeprefix("argument "))


@dataclass(frozen=True)
class Topology:
    name: str
    compose_file: str  # in docker/
    project: str
    server: str  # the FTP server's service name
    passive_target: str  # host:port the client connects to for passive transfers
    active_target: str  # ... and for active ones


def topologies() -> dict[str, Topology]:
    published = os.environ.get("FTPALG_PUBLISH_ADDRESS") or PUBLISH_DEFAULT
    return {
        "reverse": Topology(
            "reverse",
            "compose.yaml",
            "ftpalg-reverse",
            "vsftpd",
            f"{published}:2121",
            "172.30.1.10:21",
        ),
        "transparent": Topology(
            "transparent",
            "compose.transparent.yaml",
            "ftpalg-transparent",
            "server",
            "172.31.2.20:21",
            "172.31.2.20:21",
        ),
    }


@dataclass(frozen=True)
class Row:
    topology: str
    mode: str
    upload: bool
    target: str
    ok: bool
    seconds: float
    reason: str = ""
    client_cmd: str | None = None
    server_cmd: str | None = None
    plane: str = "-"

    @property
    def label(self) -> str:
        return f"{self.topology} {self.mode} {'put' if self.upload else 'get'}"


def _run(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or LabFailure with the tail of its output."""
    try:
        cp = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabFailure(f"{shlex.join(argv)}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise LabFailure(f"{shlex.join(argv)}: {exc}") from None
    if cp.returncode != 0:
        tail = "\n".join((cp.stdout + cp.stderr).strip().splitlines()[-15:])
        raise LabFailure(f"{shlex.join(argv)} exited with {cp.returncode}:\n{tail}")
    return cp.stdout


class Engine:
    """A compose tool (`compose`) and the container CLI (`cli`: podman or docker) it drives."""

    def __init__(self, compose: list[str]) -> None:
        self.compose = compose
        # docker's compose tools may drive podman's Docker API (DOCKER_HOST): then the podman
        # CLI sees the same containers when there is no docker CLI.
        podman = "podman-compose" in Path(compose[0]).name or not shutil.which("docker")
        self.cli = "podman" if podman else "docker"
        # HEALTHCHECK survives a podman build only in the docker image format.
        self.env = os.environ | ({"BUILDAH_FORMAT": "docker"} if self.cli == "podman" else {})

    def run_compose(self, topo: Topology, args: Sequence[str], timeout: float) -> str:
        head = [*self.compose, "-f", str(DOCKER_DIR / topo.compose_file), "-p", topo.project]
        return _run([*head, *args], timeout, self.env)

    def ids(self, kind: str, project: str, service: str | None = None) -> list[str]:
        """A project's containers or networks (`kind`), by compose label: IDs or names."""
        argv = [self.cli, kind, "ls", "-q"] + (["-a"] if kind == "container" else [])
        argv += ["--filter", f"label=com.docker.compose.project={project}"]
        if service:
            argv += ["--filter", f"label=com.docker.compose.service={service}"]
        return _run(argv, 60).split()

    def container(self, topo: Topology, service: str) -> str:
        found = self.ids("container", topo.project, service)
        if len(found) != 1:
            raise LabFailure(f"{topo.project}: {len(found)} containers for service {service}")
        return found[0]

    def exec(
        self, cid: str, argv: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.cli, "exec", cid, *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], -1, "", f"no answer within {timeout:g} s")

    def events(self, cid: str) -> list[dict[str, Any]]:
        """The gateway's JSON log events so far."""
        out = []
        try:  # ftpalg logs to stderr, which the engine keeps apart
            cp = subprocess.run(
                [self.cli, "logs", cid],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LabFailure(f"{self.cli} logs {cid}: no answer within 60 s") from None
        for line in cp.stdout.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def healthy(self, cid: str) -> bool:
        """The image's own HEALTHCHECK command, run now in the container (podman runs health
        checks from systemd timers, which a machine without systemd does not have)."""
        fmt = "{{json .Config.Healthcheck}}"
        check = json.loads(_run([self.cli, "inspect", "-f", fmt, cid], 60) or "null") or {}
        test = check.get("Test") or []
        if not test or test[0] not in ("CMD", "CMD-SHELL"):
            raise LabFailure(f"the gateway's image has no HEALTHCHECK: {check}")
        argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
        return self.exec(cid, argv, 30).returncode == 0


def find_compose(wanted: str | None) -> list[str]:
    """The compose command: `wanted`, else docker's when a daemon answers, else podman's."""
    if wanted:
        return shlex.split(wanted)
    docker_ok = shutil.which("docker") and _quiet(["docker", "info"])
    if docker_ok and _quiet(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if docker_ok and shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("podman") and shutil.which("podman-compose"):
        return ["podman-compose"]
    raise LabFailure(
        "no container engine with a compose tool (docker + docker compose/docker-compose, or "
        "podman + podman-compose); on a Debian machine `make compose-lab` installs podman"
    )


def _quiet(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Progress:
    def __init__(self, out: TextIO, total: int) -> None:
        self.out, self.total, self.done, self.current = out, total, 0, "starting"

    def step(self, text: str) -> None:
        self.current = text
        print(f"ftpalg lab: {text}", file=self.out, flush=True)

    def row(self, row: Row) -> None:
        self.done += 1
        speed = f"{FILE_SIZE / row.seconds / 1e6:8.1f} MB/s" if row.ok and row.seconds else ""
        state = "ok  " if row.ok else f"FAIL {row.reason}"
        line = f"[{self.done:>2}/{self.total}] {row.label:<32} {state} {speed}"
        print(f"ftpalg lab: {line.rstrip()}", file=self.out, flush=True)


def _client_argv(mode: str, upload: bool, target: str, name: str) -> list[str]:
    """A shell command in the client container: one transfer, then `@@ rc nanoseconds`."""
    url = f"ftp://{target}/"
    if mode.startswith("curl"):
        xfer = ["curl", "-sS", "-v", "--max-time", f"{TIMEOUT:g}", "--connect-timeout", "10"]
        xfer += CURL_FLAGS[mode]
        xfer += ["-T", "/tmp/upload.bin", f"{url}upload/{name}"] if upload else []
        xfer += [] if upload else ["-o", "/tmp/download.bin", f"{url}test.bin"]
    else:
        verb = f"put /tmp/upload.bin -o upload/{name}" if upload else ""
        verb = verb or "get test.bin -o /tmp/download.bin"
        passive = "on" if mode == "lftp-passive" else "off"
        script = (
            "debug 3; set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 10; "
            f"set ftp:ssl-allow no; set ftp:passive-mode {passive}; set xfer:clobber on; "
            f"open {url}; {verb}; exit"
        )
        xfer = ["lftp", "-c", script]
    wrapper = (
        'rm -f /tmp/download.bin; s=$(date +%s%N); "$@"; rc=$?; e=$(date +%s%N); '
        'echo "@@ $rc $((e - s))"'
    )
    return ["sh", "-c", wrapper, "sh", *xfer]


def _sha256(engine: Engine, cid: str, path: str) -> str | None:
    cp = engine.exec(cid, ["sha256sum", path], 60)
    return cp.stdout.split()[0] if cp.returncode == 0 and cp.stdout.strip() else None


def run_topology(engine: Engine, topo: Topology, progress: Progress) -> Iterator[Row]:
    """Every mode, download and upload, through one running project."""
    client = engine.container(topo, "client")
    server = engine.container(topo, topo.server)
    gateway = engine.container(topo, "gateway")
    served = _sha256(engine, server, f"{SERVER_ROOT}/test.bin")
    make = f"head -c {FILE_SIZE} /dev/urandom > /tmp/upload.bin && sha256sum /tmp/upload.bin"
    made = engine.exec(client, ["sh", "-c", make], 60)
    if served is None or made.returncode != 0:
        raise LabFailure(f"{topo.project}: cannot prepare the test files: {made.stderr.strip()}")
    sent = made.stdout.split()[0]
    seen = len(engine.events(gateway))
    for mode in MODES:
        for upload in (False, True):
            target = topo.passive_target if mode in PASSIVE else topo.active_target
            name = f"{topo.name}-{mode}.bin"
            cp = engine.exec(client, _client_argv(mode, upload, target, name), TIMEOUT + 15)
            tail = cp.stdout.strip().splitlines()[-1:] or [""]
            fields = tail[0].split()
            rc = int(fields[1]) if len(fields) == 3 and fields[0] == "@@" else cp.returncode
            seconds = int(fields[2]) / 1e9 if len(fields) == 3 and fields[0] == "@@" else 0.0
            events = engine.events(gateway)
            new, seen = events[seen:], len(events)
            row = _judge(engine, topo, mode, upload, target, rc, seconds, cp, new)
            if row.ok:
                path = f"{SERVER_ROOT}/upload/{name}" if upload else "/tmp/download.bin"
                got = _sha256(engine, server if upload else client, path)
                want = sent if upload else served
                if got != want:
                    reason = f"sha256 mismatch: {got or 'no file'} != {want}"
                    row = replace(row, ok=False, reason=reason)
            progress.row(row)
            yield row


def _judge(
    engine: Engine,
    topo: Topology,
    mode: str,
    upload: bool,
    target: str,
    rc: int,
    seconds: float,
    cp: subprocess.CompletedProcess[str],
    new: list[dict[str, Any]],
) -> Row:
    """A row from the client's exit code and the gateway's events of this transfer."""
    rewrites = [e for e in new if e.get("event") in ANNOUNCED]  # rewritten or left as it was
    client_cmd = server_cmd = None
    if rewrites:
        last = rewrites[-1]
        before, after = str(last.get("before")), str(last.get("after"))
        active = last.get("kind") in ("PORT", "EPRT")
        client_cmd, server_cmd = (before, after) if active else (after, before)
    finished = [e for e in new if e.get("event") == "data_finished"]
    plane = str(finished[-1].get("data_plane", "-")) if finished else "-"
    row = Row(topo.name, mode, upload, target, True, seconds, "", client_cmd, server_cmd, plane)
    if rc != 0:
        head = f"{mode.split('-')[0]} {mode.split('-')[1]} exit {rc}:"
        detail = f"{head}\n{cp.stderr[-2000:]}"
        return replace(row, ok=False, reason=reason_line(detail))
    counted = [
        int(e.get("bytes_to_server" if upload else "bytes_to_client") or 0) for e in finished
    ]
    if FILE_SIZE not in counted:
        reason = f"ftpalg counted {counted or 'no transfer'}, not {FILE_SIZE} bytes"
        return replace(row, ok=False, reason=reason)
    return row


LEGEND = (
    "connects to: where the client opened its control connection (reverse: passive modes use\n"
    "the published address, active modes the gateway's own); client side: the PORT/EPRT the\n"
    "client sent or the 227/229 it received; server side: the same line as vsftpd received or\n"
    "sent it (from ftpalg's log); plane: who carried the data (kernel pinhole or ftpalg's\n"
    "relay); ok: sha256 intact and ftpalg counted every byte. MB/s: 8 MiB / the client's\n"
    "whole run (start-up, login, transfer)."
)


def render(rows: Sequence[Row]) -> str:
    headers = ["lab", "mode", "dir", "connects to", "client side", "server side", "plane"]
    headers += ["ftpalg", "MB/s"]
    notes: list[str] = []
    body: list[list[str]] = []
    for r in rows:
        if r.ok:
            state = "ok"
        else:
            notes.append(f"[{len(notes) + 1}] {r.label}: {r.reason}")
            state = f"FAIL [{len(notes)}]"
        speed = f"{FILE_SIZE / r.seconds / 1e6:.1f}" if r.ok and r.seconds else "-"
        body.append(
            [
                r.topology,
                r.mode,
                "put" if r.upload else "get",
                r.target,
                shorten(r.client_cmd),
                shorten(r.server_cmd),
                r.plane,
                state,
                speed,
            ]
        )
    text = [*grid(headers, body, {8}), "", LEGEND]
    if notes:
        text += ["", *notes]
    good = sum(r.ok for r in rows)
    text += ["", f"ftpalg: {good}/{len(rows)} ok"]
    return "\n".join(text) + "\n"


def up(engine: Engine, topo: Topology, progress: Progress) -> None:
    progress.step(f"starting {topo.project} ({topo.compose_file})")
    down(engine, topo)  # a run that was killed may have left it up
    engine.run_compose(topo, ["up", "-d", "--no-build"], 300)
    gateway = engine.container(topo, "gateway")
    deadline = time.monotonic() + 60
    while not engine.healthy(gateway):
        if time.monotonic() > deadline:
            events = engine.events(gateway)[-3:]
            raise LabFailure(f"{topo.project}: the gateway is not healthy after 60 s: {events}")
        time.sleep(1)
    client = engine.container(topo, "client")
    probe = ["curl", "-sS", "--max-time", "5", f"ftp://{topo.passive_target}/hello.txt"]
    deadline = time.monotonic() + 30
    while (cp := engine.exec(client, probe, 15)).returncode != 0:
        if time.monotonic() > deadline:
            raise LabFailure(f"{topo.project}: no FTP through the gateway: {cp.stderr.strip()}")
        time.sleep(1)


def down(engine: Engine, topo: Topology) -> None:
    """Take the project down; remove by ID whatever the compose tool left behind."""
    try:
        engine.run_compose(topo, ["down", "-t", "2"], 300)
    except LabFailure as exc:
        print(f"ftpalg lab: {topo.project}: compose down: {exc}", file=sys.stderr)
    for cid in engine.ids("container", topo.project):
        _quiet([engine.cli, "rm", "-f", cid])
    for net in engine.ids("network", topo.project):
        _quiet([engine.cli, "network", "rm", net])


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ftpalg lab --containers",
        allow_abbrev=False,
        description="Build the images of docker/, start the reverse and the transparent "
        "compose lab, run real FTP transfers from the client container through ftpalg, print "
        "a table and take the labs down (images are kept).",
    )
    add = p.add_argument
    add(
        "--compose",
        metavar="CMD",
        help="compose command (default: docker compose, "
        "docker-compose or podman-compose, the first with a working engine)",
    )
    add(
        "--topology",
        action="append",
        choices=["reverse", "transparent"],
        help="run only this lab (repeatable; default both)",
    )
    add("--no-build", action="store_true", help="use the images as they are")
    add("--keep", action="store_true", help="leave the labs up after the table until Ctrl-C")
    return p


def containers_main(argv: list[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        args = build_parser().parse_args(argv)
    except LabFailure as exc:
        print(f"ftpalg lab: {exc}", file=sys.stderr)
        return EXIT_USAGE
    chosen = [topologies()[name] for name in (args.topology or ["reverse", "transparent"])]
    progress = Progress(sys.stderr, len(chosen) * len(MODES) * 2)
    started: list[Topology] = []
    engine: Engine | None = None
    try:
        with _signals(raising=True):
            if not (DOCKER_DIR / "compose.yaml").is_file():
                raise LabFailure(f"{DOCKER_DIR}/compose.yaml not found: run from a checkout")
            engine = Engine(find_compose(args.compose))
            progress.step(f"compose: {shlex.join(engine.compose)} (engine {engine.cli})")
            if not args.no_build:
                progress.step("building the images (docker/compose.yaml)")
                engine.run_compose(topologies()["reverse"], ["build"], 1800)
            rows: list[Row] = []
            for topo in chosen:
                started.append(topo)
                up(engine, topo, progress)
            for topo in chosen:
                progress.step(f"transfers through {topo.project}")
                rows += run_topology(engine, topo, progress)
            out.write(render(rows))
            out.flush()
            if args.keep:
                _wait_keep(engine, chosen)
            return 0 if all(r.ok for r in rows) else EXIT_FAIL
    except KeyboardInterrupt:
        print("ftpalg lab: interrupted; taking the labs down", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LabFailure as exc:
        print(f"ftpalg lab: {progress.current}: failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        if engine is not None:
            with _signals(raising=False):
                for topo in started:
                    progress.step(f"taking {topo.project} down")
                    down(engine, topo)


def _wait_keep(engine: Engine, chosen: Sequence[Topology]) -> None:
    print("\nThe labs are up; press Ctrl-C here to take them down.", file=sys.stderr)
    for topo in chosen:
        head = f"{shlex.join(engine.compose)} -f {DOCKER_DIR / topo.compose_file} -p {topo.project}"
        print(
            f"  {topo.name}: {head} exec client curl ftp://{topo.passive_target}/hello.txt",
            file=sys.stderr,
        )
        print(f"  {' ' * len(topo.name)}  {head} logs gateway", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
