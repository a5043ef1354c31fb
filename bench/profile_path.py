"""Where one bench path's ftpalg spends its CPU under the session load, whatever the verdict.

    .venv/bin/python -m bench.profile_path ftpalg-kernel [--seconds 8] [--workers 8]

How this works: builds the path's lab alone (`bench.paths.build`, its own vsftpd), runs the
session workload of `bench/load.py` twice under py-spy (Python frames, then `--native`, which
shows the system calls), prints the rate of each run and the frames with the most samples
(`bench.profile.top`), and tears the lab down. `make bench` profiles the relay path only
when a target is missed; this looks at any path (the kernel data plane is the default).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench import paths, phases, profile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_path", description=__doc__)
    p.add_argument("path", choices=[n for n in paths.PATHS if n.startswith("ftpalg")])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = p.parse_args(argv)
    if why := profile.available():
        p.error(why)
    scratch = Path(tempfile.mkdtemp(prefix="ftpalg-profile-", dir="/dev/shm"))
    saved, tempfile.tempdir = tempfile.tempdir, str(scratch)  # the lab's files: one device
    (scratch / "big.bin").write_bytes(b"x" * 1024)
    bp = paths.build(args.path, {"big.bin": scratch / "big.bin"})
    try:
        assert bp.proxy_pid is not None
        for native in (False, True):
            out = args.out / f"pyspy-{args.path}{'-native' if native else ''}.txt"
            prof = profile.Profiler(bp.proxy_pid, out, native=native)
            try:
                load = ("--workers", str(args.workers), "--duration", str(args.seconds))
                rate = phases.load(bp, "sessions", *load)["rate"]
            finally:
                prof.stop()
            top = profile.top(out, n=20)
            print(f"== {out}: {top['samples']} samples, {rate:.0f} sessions/s")
            for key in ("self", "leaf_in"):
                print(f"-- {key} (% of samples)")
                for frame, share in top[key]:
                    print(f"  {share:5.1f}  {frame}")
    finally:
        bp.lab.close()
        tempfile.tempdir = saved
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
