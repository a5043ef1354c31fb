"""The `ftpalg` command: the gateway daemon, `ftpalg lab` (the network-namespace demo) and
`ftpalg cleanup` (remove what a killed instance left in the kernel).

Every failure the operator can cause (bad flags or config, a listener that cannot bind, a
missing capability) ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ftpalg.ops.config import ConfigError, build_config

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["lab"]:
        from ftpalg.lab.command import lab_main

        return lab_main(args[1:])
    if args[:1] == ["cleanup"]:
        return cleanup_main(args[1:])
    try:
        config, parsed = build_config(args)
    except ConfigError as exc:
        print(f"ftpalg: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if parsed.check_config:  # the file and flags, plus what only the machine knows (user)
        from ftpalg.ops.reload import check_config

        status, line = check_config(args)
        print(line, file=sys.stdout if status == 0 else sys.stderr)
        return status
    from ftpalg.proxy.daemon import run_daemon

    return run_daemon(config, args)


def cleanup_main(args: list[str]) -> int:
    if args:
        print("usage: ftpalg cleanup  (no options; as root, where ftpalg ran)", file=sys.stderr)
        return EXIT_CONFIG
    from ftpalg.kernel.cleanup import cleanup
    from ftpalg.kernel.errors import KernelSetupError

    try:
        print(f"ftpalg: {cleanup()}")
    except KernelSetupError as exc:
        print(f"ftpalg: {exc}", file=sys.stderr)
        return 1
    return 0
