"""Run cases through the gateway as it is configured now: scripted server + scripted client.

How this works. The cases (JSON form) and the server's addresses go into a corpus file in the
work directory (all namespaces share the file system). A fresh scripted server starts in `srv`
(it prints `ready` once it listens), the scripted client runs every case in `cli`, then the
server's stdin is closed and it reports what it received, chunk by chunk with arrival times.
Both reports are keyed by case id; the USER tag keeps runs apart. What the server got after
the client reset the connection (e.g. ftpalg passing on an unterminated fragment when its
client goes away) is kept apart as "late": the time box ends when the client gives up.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ftpalg.lab.netns import Lab, LabError
from ftpalg.parity.verdict import Observation


def run_peers(
    lab: Lab, workdir: Path, tag: str, cases: list[dict[str, Any]], window: float
) -> dict[str, Observation]:
    """Run cases (JSON form) through whatever the gateway does now; one observation each."""
    a = lab.addresses
    corpus = workdir / f"corpus-{tag}.json"
    corpus.write_text(
        json.dumps(
            {
                "server_v4": str(a.server_v4),
                "server_v6": str(a.server_v6),
                "cases": cases,
            }
        )
    )
    py = sys.executable
    server = lab.popen(
        "srv",
        [py, "-m", "ftpalg.parity.server", str(corpus)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    if server.stdout.readline().strip() != "ready":
        raise LabError("the scripted server did not start")
    try:
        argv = [
            py,
            "-m",
            "ftpalg.parity.client",
            str(corpus),
            "--tag",
            tag,
            "--window",
            f"{window:g}",
        ]
        client = lab.run("cli", argv, timeout=60 + 4 * window * (1 + len(cases) // 32))
        if client.returncode != 0:
            raise LabError(f"the scripted client failed: {client.stderr.strip()[-2000:]}")
        at_client = json.loads(client.stdout)
    finally:
        out, _ = server.communicate(timeout=20)
    at_server = json.loads(out)
    observations = {}
    for case in cases:
        got = at_client.get(case["id"], {"rx": "", "error": "no result", "closed_at": 0.0})
        chunks = at_server.get(f"{tag}.{case['id']}", [])
        cut = got.get("closed_at") or float("inf")
        observations[case["id"]] = Observation(
            to_server=b"".join(base64.b64decode(c) for t, c in chunks if t <= cut),
            to_client=base64.b64decode(got["rx"]),
            error=got["error"],
            late_to_server=b"".join(base64.b64decode(c) for t, c in chunks if t > cut),
        )
    return observations
