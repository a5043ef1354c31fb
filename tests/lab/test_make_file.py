"""make_file: deterministic test data (no root needed). How fast it is, is measured by
bench/make_file_bench.py, not asserted here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftpalg.lab.servers import make_file, sha256_file

MiB = 1 << 20


@pytest.mark.timeout(30)
def test_make_file_is_deterministic(tmp_path: Path) -> None:
    digest = make_file(tmp_path, "big.bin", 64 * MiB)
    assert (tmp_path / "big.bin").stat().st_size == 64 * MiB
    assert sha256_file(tmp_path / "big.bin") == digest
    assert make_file(tmp_path, "again.bin", 64 * MiB, seed=1) == make_file(
        tmp_path, "again2.bin", 64 * MiB, seed=1
    )
    # consecutive MiB blocks differ (not one block repeated)
    with open(tmp_path / "big.bin", "rb") as f:
        assert f.read(MiB) != f.read(MiB)


def test_bench_reports_a_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/make_file_bench.py runs and reports MB/s (a number, never a pass/fail)."""
    from bench.make_file_bench import main

    runs = main(["--size-mib", "2", "--repeat", "2"])
    assert len(runs) == 2 and all(r > 0 for r in runs)
    assert re.fullmatch(
        r"make_file, 2 MiB x 2: \d+ MB/s \(runs: \d+, \d+\)\n", capsys.readouterr().out
    )
