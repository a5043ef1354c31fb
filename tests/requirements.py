"""What a test needs from the machine: skip without it, or fail when it is required.

Every test that cannot run here (not root, a tool or IPv6 loopback missing, the lab cannot be
built) calls `unavailable(reason)` instead of `pytest.skip` or `pytest.mark.skipif`, so that
`FTPALG_LAB_REQUIRED=1` (set by `.ci/run`) turns the skip into a failure with the reason.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from ftpalg.lab.netns import lab_required, missing_tools


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when the lab is required (FTPALG_LAB_REQUIRED=1)."""
    if lab_required():
        pytest.fail(
            f"lab required (FTPALG_LAB_REQUIRED=1) but unavailable: {reason}", pytrace=False
        )
    pytest.skip(reason)


def need_tools(*names: str) -> None:
    """Skip (or fail, see `unavailable`) unless every program in `names` is on PATH."""
    missing = missing_tools(*names)
    if missing:
        unavailable("missing tools: " + ", ".join(missing))
