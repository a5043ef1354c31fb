"""Coverage-guided fuzzing of the core with atheris (run by hand; see docs/hardening.md).

    .venv/bin/pip install atheris
    .venv/bin/python -m tests.fuzz.fuzz_core -atheris_runs=1000000

The invariant lives in tests/fuzz/target.py; seeds are address lines of every kind.
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
