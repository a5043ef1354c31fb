"""Coverage-guided fuzzing of the core with atheris (run by hand; see docs/hardening.md).

    .venv/bin/pip install atheris
    .venv/bin/python -m tests.fuzz.fuzz_core -atheris_runs=1000000

tests/fuzz/target.py reads each input as a program of session events (both sides' bytes,
listeners bound or failing, data connections, timers, EOFs, CloseRequested); every step is
checked by the invariant checker shared with the property tests (tests/core/invariants.py),
whose InvariantViolation is the crash atheris reports.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    from tests.fuzz.target import run_session


def main() -> None:
    atheris.Setup(sys.argv, lambda data: run_session(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
