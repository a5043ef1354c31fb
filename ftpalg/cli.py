"""The `ftpalg` command: the gateway daemon, and `ftpalg lab` (the network-namespace demo).

Every failure the operator can cause (bad flags or config, a listener that cannot bind, a
missing capability) ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ftpalg.config import ConfigError, build_config

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config, _ = build_config(args)
    except ConfigError as exc:
        print(f"ftpalg: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from ftpalg.proxy.daemon import run_daemon

    return run_daemon(config)
