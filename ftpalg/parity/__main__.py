"""`python -m ftpalg.parity [--output docs/parity.md]`: the differential run, end to end.

How this works: builds a lab (root, network namespaces), runs the corpus through the kernel's
FTP NAT helper and through ftpalg, checks the seq ledger against a capture, writes the
Markdown report (to --output, else stdout) and exits 1 on any failure (a mirror mismatch, an
unexpected kernel or ftpalg outcome, a ledger difference), 2 when the lab cannot be built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftpalg.lab.netns import LabUnavailable
from ftpalg.parity.report import render_markdown
from ftpalg.parity.runner import run_parity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ftpalg.parity",
        description="Differential test of ftpalg against the kernel's nf_nat_ftp.",
    )
    ap.add_argument("--output", type=Path, help="write the Markdown report here")
    ap.add_argument(
        "--window", type=float, default=2.0, help="seconds to wait for a case's result (default 2)"
    )
    ap.add_argument("--no-ledger", action="store_true", help="skip the seq-ledger capture")
    args = ap.parse_args(argv)
    try:
        run = run_parity(window=args.window, ledger=not args.no_ledger)
    except LabUnavailable as exc:
        print(f"parity: lab unavailable: {exc}", file=sys.stderr)
        return 2
    command = "python -m ftpalg.parity" + (f" --output {args.output}" if args.output else "")
    text = render_markdown(run, command)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    for r in run.failures:
        print(f"parity: {r.case.id}: {r.verdict} {r.detail}", file=sys.stderr)
    if run.ledger is not None and not run.ledger.ok:
        print(
            f"parity: ledger: kernel {run.ledger.kernel} ftpalg {run.ledger.ftpalg} "
            f"{run.ledger.problems}",
            file=sys.stderr,
        )
    n = len(run.results)
    print(f"parity: {n} cases, {len(run.failures)} failed", file=sys.stderr)
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
