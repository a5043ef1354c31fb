"""SIGHUP reloads and ``--check-config``: what may change at runtime, and checking a config.

How this works. A reload rebuilds the configuration from the daemon's original command line
(``build_config(argv)``: defaults < the ``--config`` file, read again < the same flags), so a
flag keeps overriding the file exactly as at start. Keys in `RESTART_ONLY` (listeners, mode,
kernel set-up, the metrics socket, the user) cannot change in a running process: their new
values are reported as "needs restart" and the old ones kept. Everything else — policy,
limits, timeouts, logging, the xferlog path — applies to sessions opened from then on;
running sessions keep the `CorePolicy` they started with (a core `Session` holds its own).
A file that does not load or check is reported in one line and nothing changes.

`runtime_check` adds what only the machine can tell (does ``user`` exist, is there a
directory for ``xferlog``) to the checks of ``ftpalg.ops.config``; ``--check-config`` also
runs `start_check` (is ``nft`` installed when the kernel set-up needs it, does the upstream
name resolve) and names the file's keys that flags override (a unit's ExecStart flags win
over /etc/ftpalg/ftpalg.toml).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from ftpalg.ops.config import Config, ConfigError, build_config, load_toml
from ftpalg.ops.flags import build_parser

RESTART_ONLY = (
    "listen",
    "listen_implicit",
    "upstream",
    "kernel_setup",
    "tproxy_mark",
    "route_table",
    "inside_interfaces",
    "metrics",
    "user",
    "data_plane",
)


@dataclass(frozen=True, slots=True)
class Reload:
    config: Config  # the configuration to run with (restart-only keys as before)
    changed: tuple[str, ...]  # keys whose new values apply now
    needs_restart: tuple[str, ...]  # keys whose new values were not applied


def runtime_check(config: Config) -> None:
    """Raise ConfigError (one line) for what the config parser cannot know."""
    if config.user is not None:
        try:
            pwd.getpwnam(config.user)
        except KeyError:
            raise ConfigError(f"user: no such user {config.user!r}", key="user") from None
    if config.xferlog is not None:
        directory = os.path.dirname(os.path.abspath(config.xferlog))
        if not os.path.isdir(directory):
            raise ConfigError(f"xferlog: no directory {directory!r}", key="xferlog")
    if config.tls == "terminate":  # the certificate is (re)loaded here: docs/ftps.md
        from ftpalg.proxy.tls_context import load

        load(config)


def plan_reload(current: Config, argv: Sequence[str]) -> Reload:
    """The configuration a SIGHUP leads to; raises ConfigError when the new one is bad."""
    new, _ = build_config(argv)
    runtime_check(new)
    kept = tuple(k for k in RESTART_ONLY if getattr(new, k) != getattr(current, k))
    config = dataclasses.replace(new, **{k: getattr(current, k) for k in kept})
    names = [f.name for f in dataclasses.fields(Config)]
    changed = tuple(k for k in names if getattr(config, k) != getattr(current, k))
    return Reload(config, changed, kept)


def start_check(config: Config) -> None:
    """What starting would need beyond the config itself: `nft` for the kernel set-up it
    must make, and an upstream name that resolves. Raises ConfigError (one line)."""
    needs_nft = config.kernel_setup and (config.transparent or config.data_plane == "kernel")
    if needs_nft and shutil.which("nft") is None:
        raise ConfigError("nft: not installed (the kernel set-up needs nftables' nft)")
    if config.upstream is not None:
        try:
            socket.getaddrinfo(config.upstream.host, config.upstream.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError(
                f"upstream: cannot resolve {config.upstream.host!r} ({why})", key="upstream"
            ) from None


def overridden(argv: Sequence[str], config_file: str | None) -> list[str]:
    """Keys the file sets that flags on this command line override."""
    if config_file is None:
        return []
    args = build_parser().parse_args(list(argv))
    return [key for key in load_toml(config_file) if getattr(args, key, None) is not None]


def check_config(argv: Sequence[str]) -> tuple[int, str]:
    """``ftpalg --check-config``: (exit status, one line)."""
    try:
        config, args = build_config(argv)
        runtime_check(config)
        start_check(config)
    except ConfigError as exc:
        return 2, f"ftpalg: {exc}"
    source = f"config {args.config}" if args.config else "built-in defaults and flags"
    mode = f"reverse to {config.upstream}" if config.upstream else "transparent"
    if config.nat64_prefix is not None:
        mode += f", NAT64 prefix {config.nat64_prefix}"
    line = f"ftpalg: {source}: OK ({mode}, listen {', '.join(map(str, config.listen))})"
    keys = overridden(argv, args.config)
    if keys:
        line += f"; flags override the file's {', '.join(keys)}"
    return 0, line
