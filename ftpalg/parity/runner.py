"""Build the lab and run the corpus through the kernel helper and through ftpalg.

How this works. One `Lab` (client — gateway — server namespaces). The kernel path first:
`apply_kernel_nat` (ct helper ftp + masquerade, forward drop except established/related and
new tcp/21), the scripted server in `srv`, the scripted client in `cli` running every case,
then the seq-ledger capture (`seqcheck`). Then the same gateway becomes ftpalg's:
`apply_closed_gateway` (the kernel helper table is replaced, so the two paths are never active
together) and ftpalg in transparent mode, once with the default configuration and once with
`--allow-low-data-ports` for the low-port cases. Each run gets a fresh scripted server and its
own USER tag, so no two runs can be confused. The lab removes every namespace and process at
the end, also on failure.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ftpalg.lab.alg import start_ftpalg
from ftpalg.lab.gateway import apply_closed_gateway, apply_kernel_nat
from ftpalg.lab.netns import Lab
from ftpalg.parity import seqcheck
from ftpalg.parity.cases import Rendered, render
from ftpalg.parity.corpus import CASES
from ftpalg.parity.peers import run_peers
from ftpalg.parity.verdict import CaseResult, Observation, judge

FTPALG_ARGS = ["--listen", "0.0.0.0:21", "--listen", "[::]:21", "--grace-period", "0"]
CONFIG_ARGS = {"default": [], "low": ["--allow-low-data-ports"]}


@dataclass
class ParityRun:
    results: list[CaseResult]
    ledger: seqcheck.LedgerResult | None
    kernel: str = field(default_factory=platform.release)
    date: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    subnet: int = 0

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures and (self.ledger is None or self.ledger.ok)


def _run_ftpalg(
    lab: Lab, workdir: Path, rendered: list[Rendered], window: float
) -> dict[str, Observation]:
    apply_closed_gateway(lab)
    # Forget the kernel path's connections: a stale conntrack entry (RST'd cases stay in
    # CLOSE for 10 s) still carries its NAT binding, and a client reusing its source port
    # would have ftpalg's SYN-ACK de-NATed away (seen in CI as a rare "no banner").
    lab.run("gw", ["conntrack", "-F"], check=True)
    observations: dict[str, Observation] = {}
    for config, extra in CONFIG_ARGS.items():
        cases = [c.to_json() for c in rendered if c.config == config]
        if not cases:
            continue
        alg = start_ftpalg(lab, FTPALG_ARGS + extra)
        try:
            observations |= run_peers(lab, workdir, f"a{config}", cases, window)
        finally:
            alg.stop()
    return observations


def run_parity(window: float = 2.0, ledger: bool = True, lab: Lab | None = None) -> ParityRun:
    """The whole differential run; builds (and closes) its own lab unless one is given."""
    own = lab is None
    lab = lab or Lab(prefix="par").start()
    workdir = Path(tempfile.mkdtemp(prefix=f"{lab.id}-parity-"))
    try:
        rendered = render(CASES, lab.addresses)
        apply_kernel_nat(lab)
        kernel = run_peers(lab, workdir, "k", [c.to_json() for c in rendered], window)
        ledger_result = seqcheck.check_ledger(lab, workdir, window) if ledger else None
        ftpalg = _run_ftpalg(lab, workdir, rendered, window)
        results = [judge(c, kernel[c.id], ftpalg[c.id]) for c in rendered]
        return ParityRun(results, ledger_result, subnet=lab.addresses.subnet)
    finally:
        if own:
            lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
