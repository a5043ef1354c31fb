"""Byte counts of `data_finished` against what a transfer carried.

The relay counts exactly. The kernel plane counts exactly from the SYN and FIN sequence
numbers it logs; when one of those records is missing (a busy machine), it falls back to the
conntrack counters' estimate and says so (`estimated: true`). For a loss-free transfer that
estimate was exact for the data direction and at most 12 bytes high for the pure-ACK one
(ftpalg/kernel/conntrack_payload.py; a SACK option): an estimate must be within
`ESTIMATE_SLACK` of the truth, an exact count equal to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ESTIMATE_SLACK = 64  # bytes per direction


def counts_match(events: Iterable[dict[str, Any]], want: tuple[int, int]) -> bool:
    """True when one `data_finished` event counted (bytes_to_client, bytes_to_server) = want."""
    for e in events:
        got = (e["bytes_to_client"], e["bytes_to_server"])
        if got == want:
            return True
        close = all(abs(g - w) <= ESTIMATE_SLACK for g, w in zip(got, want, strict=True))
        if e.get("estimated") is True and close:
            return True
    return False
