"""The `ftpalg` command: the gateway daemon, and `ftpalg lab` (the network-namespace demo).

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
