"""`make lab` / `make test` leave no FTP server enabled or listening on the host (issue 16,
item 6): the lab runs its servers privately inside network namespaces, and scripts/setup.sh
disables and masks what apt enables. Checked after the set-up that `make test` runs first."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = ("vsftpd", "ftp-proxy", "tayga")


def installed(unit: str) -> bool:
    return (
        Path(f"/lib/systemd/system/{unit}.service").exists() or Path(f"/etc/init.d/{unit}").exists()
    )


@pytest.mark.parametrize("unit", UNITS)
def test_no_ftp_server_is_enabled_on_the_host(unit: str) -> None:
    if not installed(unit):
        pytest.skip(f"{unit} is not installed here")  # nothing apt could have enabled
    if shutil.which("systemctl"):
        out = subprocess.run(
            ["systemctl", "is-enabled", unit], capture_output=True, text=True, check=False
        )
        assert out.stdout.strip() in ("disabled", "masked"), out.stdout + out.stderr
    starts = [p for p in Path("/etc").glob(f"rc[2-5].d/S*{unit}")]
    assert starts == [], starts


def test_nothing_listens_on_port_21_on_the_host() -> None:
    out = subprocess.run(["ss", "-Hltn", "sport = :21"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout
