"""make_file: fast, deterministic test data (no root needed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ftpalg.lab.servers import make_file, sha256_file

MiB = 1 << 20


@pytest.mark.timeout(30)
def test_make_file_is_fast_and_deterministic(tmp_path: Path) -> None:
    start = time.monotonic()
    digest = make_file(tmp_path, "big.bin", 64 * MiB)
    elapsed = time.monotonic() - start
    assert (tmp_path / "big.bin").stat().st_size == 64 * MiB
    assert sha256_file(tmp_path / "big.bin") == digest
    assert make_file(tmp_path, "again.bin", 64 * MiB, seed=1) == make_file(
        tmp_path, "again2.bin", 64 * MiB, seed=1
    )
    # consecutive MiB blocks differ (not one block repeated)
    with open(tmp_path / "big.bin", "rb") as f:
        assert f.read(MiB) != f.read(MiB)
    assert elapsed < 1.0, f"64 MiB took {elapsed:.2f} s"
