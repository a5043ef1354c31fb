"""How fast the lab writes its test data: `make_file` (deterministic pseudo-random bytes,
sha256 on the way).

    .venv/bin/python bench/make_file_bench.py [--size-mib 64] [--repeat 3] [--dir /dev/shm]

The lab tests write files of up to 64 MiB with it and `python -m bench` up to 1 GiB. Reported:
MB/s (10^6 bytes per wall-clock second) of each run and their median, into a temporary
directory (`--dir`: where; tmpfs leaves the disk out). A number to compare on one machine,
not a pass/fail: the unit test only checks what make_file writes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ftpalg.lab.servers import make_file


def one_run(directory: Path, size: int) -> float:
    """MB/s for one make_file of `size` bytes."""
    start = time.perf_counter()
    make_file(directory, "bench.bin", size)
    wall = time.perf_counter() - start
    (directory / "bench.bin").unlink()
    return size / wall / 1e6


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64, help="bytes per run, in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs (median shown)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: TMPDIR)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        runs = [one_run(Path(tmp), args.size_mib << 20) for _ in range(args.repeat)]
    detail = ", ".join(f"{r:.0f}" for r in runs)
    median = statistics.median(runs)
    print(f"make_file, {args.size_mib} MiB x {args.repeat}: {median:.0f} MB/s (runs: {detail})")
    return runs


if __name__ == "__main__":
    main()
