"""The differential suite against the real kernel (issue 5): every corpus case through the
kernel's nf_conntrack_ftp + nf_nat_ftp and through ftpalg, plus the seq ledger against a
capture. Needs the lab (root, namespaces): skipped without it, FAILED when
FTPALG_LAB_REQUIRED=1. `python -m ftpalg.parity --output docs/parity.md` runs the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ftpalg.parity.cases import DEVIATION, MIRROR, STALL
from ftpalg.parity.corpus import CASES
from ftpalg.parity.report import render_markdown
from ftpalg.parity.runner import ParityRun, run_parity
from ftpalg.parity.verdict import CaseResult
from tests.lab.conftest import start_lab
from tests.requirements import need_tools

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def run() -> Iterator[ParityRun]:
    need_tools("tcpdump")
    lab = start_lab()
    try:
        yield run_parity(lab=lab)
    finally:
        lab.close()


def _result(run: ParityRun, case_id: str) -> CaseResult:
    (result,) = [r for r in run.results if r.case.id == case_id]
    return result


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.cls == MIRROR])
def test_mirror(run: ParityRun, case_id: str) -> None:
    r = _result(run, case_id)
    assert r.ok, (r.verdict, r.detail, r.kernel, r.ftpalg)


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.cls in (DEVIATION, STALL)])
def test_deviation_outcome(run: ParityRun, case_id: str) -> None:
    """The kernel did what the case says and ftpalg what docs/core.md says."""
    r = _result(run, case_id)
    assert r.ok, (r.verdict, r.detail, r.case.ftpalg, r.kernel, r.ftpalg)


def test_no_mirror_mismatch(run: ParityRun) -> None:
    mismatches = [r.case.id for r in run.results if r.verdict == "MISMATCH"]
    assert mismatches == []
    assert not [r.case.id for r in run.results if r.verdict == "XPASS"]  # remove stale marks


def test_ledger_matches_kernel(run: ParityRun) -> None:
    led = run.ledger
    assert led is not None
    assert led.kernel[1] != led.kernel[2], "the capture must show a length change"
    assert led.ftpalg == led.kernel, led
    assert led.problems == [] and led.seq_checked >= 5 and led.ack_checked >= 5


def test_report(run: ParityRun, tmp_path: Path) -> None:
    text = render_markdown(run, "python -m ftpalg.parity --output x.md")
    assert text.startswith("# Differential parity")
    assert "python -m ftpalg.parity --output x.md" in text and run.kernel in text
    assert text.count("\n| ") >= len(CASES) + 1
    assert run.ok
