"""Started without the capability it needs, ftpalg says which one in its one error line
(issue 16, item 7): transparent mode without CAP_NET_ADMIN, port 21 without
CAP_NET_BIND_SERVICE. Run as root with every capability dropped (setpriv); nothing is set up
in the kernel before the listeners are bound, so this runs on the host's loopback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.proxy.conftest import free_port
from tests.requirements import unavailable

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]


@pytest.mark.parametrize(
    ("listen", "extra", "capability"),
    [
        ("127.0.0.1:{free}", [], "CAP_NET_ADMIN"),  # transparent: IP_TRANSPARENT
        ("127.0.0.1:21", ["--upstream", "127.0.0.1:2121"], "CAP_NET_BIND_SERVICE"),
    ],
    ids=["transparent", "port-21"],
)
def test_the_missing_capability_is_named(listen: str, extra: list[str], capability: str) -> None:
    if shutil.which("setpriv") is None:
        unavailable("setpriv (util-linux) is not installed")
    address = listen.format(free=free_port("127.0.0.1"))
    argv = [*NOBODY, sys.executable, "-m", "ftpalg", "--listen", address, *extra]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1, run.stderr
    assert lines[0].startswith(f"ftpalg: cannot listen on {address}: "), lines
    assert capability in lines[0], lines
