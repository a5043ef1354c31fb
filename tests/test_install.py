"""The production install (issue 16, item 5): scripts/install.sh (`make install`) into a fresh
prefix gives a working `ftpalg` outside the development virtualenv, and the unit it writes
passes `systemd-analyze verify` (which checks, among others, that ExecStart exists)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.requirements import unavailable

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_install_into_a_fresh_prefix(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("usr", "venv", "etc", "systemd")}
    argv = ["scripts/install.sh"]
    for name, path in dirs.items():
        argv += [f"--{'prefix' if name == 'usr' else name}", str(path)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout + run.stderr
    ftpalg = dirs["usr"] / "bin" / "ftpalg"
    version = subprocess.run([ftpalg, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ftpalg "), version.stdout
    assert not str(ftpalg.resolve()).startswith(str(ROOT))  # not the development checkout
    unit = dirs["systemd"] / "ftpalg.service"
    text = unit.read_text()
    assert f"ExecStart={ftpalg} --config {dirs['etc']}/ftpalg/ftpalg.toml" in text
    assert (dirs["etc"] / "ftpalg" / "ftpalg.toml").read_text() == (
        ROOT / "conf" / "ftpalg.toml"
    ).read_text()
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze is not installed (apt install systemd)")
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
