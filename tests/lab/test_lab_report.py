"""`ftpalg lab` without a lab (no root): flags, the matrix, the table, the pcap reader."""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest

from ftpalg import cli
from ftpalg.lab import command, ftps_rows, lab_flags, matrix
from ftpalg.lab.capture import ftp_lines, parse_pcap
from ftpalg.lab.table import (
    Case,
    Outcome,
    all_ok,
    reason_line,
    render,
    render_ftps,
    shorten,
)

# ---- flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("64k", 64 << 10),
        ("8M", 8 << 20),
        ("8MiB", 8 << 20),
        ("1G", 1 << 30),
        ("2gb", 2 << 30),
        ("0", 0),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert lab_flags.parse_size(text) == size


def test_human_size() -> None:
    sizes = [8 << 20, 64 << 10, 1 << 30, 1000, 0, (1 << 20) + 1]
    assert [lab_flags.human_size(n) for n in sizes] == [
        "8 MiB",
        "64 KiB",
        "1 GiB",
        "1000 bytes",
        "0 bytes",
        "1048577 bytes",
    ]


def test_defaults() -> None:
    args = lab_flags.build_lab_parser().parse_args([])
    assert (args.server, args.size, args.kernel, args.keep, args.quick) == (
        "pyftpdlib",
        8 << 20,
        False,
        False,
        False,
    )
    args = lab_flags.build_lab_parser().parse_args(
        ["--server", "vsftpd", "--size", "1M", "--kernel", "--keep", "--quick"]
    )
    assert (args.server, args.size, args.kernel, args.keep, args.quick) == (
        "vsftpd",
        1 << 20,
        True,
        True,
        True,
    )


@pytest.mark.parametrize(
    "argv",
    [["--size", "ten"], ["--size", "99G"], ["--server", "proftpd"], ["--bogus"], ["--kern"]],
)
def test_bad_flags_are_one_line_and_exit_2(argv: list[str], capsys: Any) -> None:
    assert cli.main(["lab", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftpalg lab: ") and err.count("\n") == 1


def test_help_goes_through_the_cli(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["lab", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ftpalg lab") and "--kernel" in out and "--keep" in out


def test_not_root_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(command.os, "geteuid", lambda: 1000)
    assert command.lab_main(["--quick"]) == 1
    err = capsys.readouterr().err
    assert "must run as root" in err and err.count("\n") == 1


# ---- the matrix ------------------------------------------------------------------------------


def test_cases_cover_every_command_both_families_and_directions() -> None:
    full, quick = matrix.cases(), matrix.cases(quick=True)
    assert len(full) == 2 * (8 + 4) and len(quick) == 2 * (4 + 2)
    assert {c.version for c in full} == {4, 6} and {c.upload for c in full} == {False, True}
    assert {c.mode for c in quick} == {"curl-epsv", "curl-pasv", "curl-eprt", "curl-port"}
    assert {c.mode for c in full if c.version == 6} == set(matrix.V6_MODES)


class _FakeAlg:
    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []

    def events(self) -> list[dict[str, Any]]:
        return self.log


def test_alg_commands_put_before_and_after_on_the_right_side() -> None:
    alg = _FakeAlg()
    alg.log.append({"event": "rewrite", "kind": "PORT", "before": "old", "after": "x"})
    cmds = matrix.AlgCommands(alg)  # type: ignore[arg-type]
    assert cmds.take() == (None, None)  # only what came after it was made
    alg.log.append(
        {"event": "rewrite", "kind": "PORT", "before": "PORT c\\r\\n", "after": "PORT s\\r\\n"}
    )
    assert cmds.take() == ("PORT c\\r\\n", "PORT s\\r\\n")  # client sent before, server saw after
    alg.log.append({"event": "rewrite", "kind": "229", "before": "229 s", "after": "229 c"})
    assert cmds.take() == ("229 c", "229 s")  # the server sent before, the client saw after
    alg.log.append(
        {"event": "announce_unchanged", "kind": "229", "before": "229 u", "after": "229 u"}
    )
    alg.log.append({"event": "data_finished"})
    assert cmds.take() == ("229 u", "229 u")  # an unchanged announcement is shown too
    assert cmds.take() == (None, None)


# ---- the table -------------------------------------------------------------------------------


def test_shorten() -> None:
    assert shorten("PORT 10,1,1,2,4,1\\r\\n") == "PORT 10,1,1,2,4,1"
    assert shorten("227 Entering Passive Mode (203,0,113,10,156,64).\\r\\n") == (
        "227 (203,0,113,10,156,64)"
    )
    assert shorten("227 Entering Passive Mode 10,0,0,5,4,1") == "227 10,0,0,5,4,1"
    assert shorten("229 Entering Extended Passive Mode (|||40001|)\r\n") == "229 (|||40001|)"
    assert shorten("227 Logout.") == "227 Logout."
    assert shorten(None) == "-"


def test_reason_line_picks_the_clients_error() -> None:
    detail = "curl port exit 30: * Trying\n< 500 Illegal PORT command.\ncurl: (30) FTP: PORT failed"
    assert reason_line(detail) == (
        "curl port exit 30: curl: (30) FTP: PORT failed [< 500 Illegal PORT command.]"
    )
    assert reason_line("ftplib active: 500 no\nTraceback") == "ftplib active: 500 no"
    assert reason_line("") == "failed (no output)"
    assert len(reason_line("x" * 1000)) == 200


CASES = [Case("curl-port", 4), Case("curl-epsv", 6, upload=True)]
OK_PORT = Outcome(True, 8 << 20, 0.1, "", "PORT 10,9,1,2,4,1\\r\\n", "PORT 203,0,113,1,4,1\\r\\n")
OK_EPSV = Outcome(True, 8 << 20, 0.05, "", "229 x (|||40001|)", "229 x (|||40001|)")


def parse_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a printed lab table (columns are two or more spaces apart)."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    rows = []
    for line in lines[rule + 1 :]:
        if not line:
            break
        rows.append(re.split(r"\s{2,}", line))
    return lines[rule - 1].split(), rows


def test_render_one_path() -> None:
    text = render(CASES, {"ftpalg": [OK_PORT, OK_EPSV]})
    header = text.splitlines()[0].split()
    assert header[:3] == ["mode", "ip", "dir"] and header[-2:] == ["ftpalg", "MB/s"]
    assert parse_table(text)[1] == [
        ["curl-port", "v4", "get", "PORT 10,9,1,2,4,1", "PORT 203,0,113,1,4,1", "ok", "83.9"],
        ["curl-epsv", "v6", "put", "229 (|||40001|)", "229 (|||40001|)", "ok", "167.8"],
    ]
    assert text.rstrip().endswith("ftpalg: 2/2 ok") and "FAIL" not in text
    assert all_ok({"ftpalg": [OK_PORT, OK_EPSV]})


def test_render_kernel_side_by_side_with_a_failure() -> None:
    bad = Outcome(False, 0, 10.0, "curl port exit 28: curl: (28) timed out")
    kernel_port = Outcome(True, 8 << 20, 0.2, "", "PORT 10,9,1,2,4,2", "PORT 203,0,113,1,4,2")
    results = {"ftpalg": [OK_PORT, bad], "kernel": [kernel_port, OK_EPSV]}
    text = render(CASES, results)
    assert text.splitlines()[0].split()[-4:] == ["ftpalg", "MB/s", "kernel", "MB/s"]
    rows = parse_table(text)[1]
    assert rows[0][-4:] == ["ok", "83.9", "ok", "41.9"]
    assert rows[1][-4:] == ["FAIL [1]", "-", "ok", "167.8"]
    assert "[1] ftpalg, curl-epsv v6 put: curl port exit 28: curl: (28) timed out" in text
    assert "Commands on the kernel path" in text and "PORT 203,0,113,1,4,2" in text
    assert "ftpalg: 1/2 ok; kernel: 2/2 ok" in text
    assert not all_ok(results)


def test_ftps_cases_say_their_policy() -> None:
    full, quick = ftps_rows.cases(), ftps_rows.cases(quick=True)
    assert {c.tls for c in full} == {"passthrough", "terminate", "terminate+upstream"}
    assert {c.mode for c in full} == {"curl-ftps", "lftp-ftps"}
    assert {c.mode for c in quick} == {"curl-ftps"} and len(quick) == len(full) - 2
    assert all(c.mode.startswith("curl") for c in full if c.tls.startswith("terminate"))
    assert Case("curl-ftps", 6, True, "terminate").label == "curl-ftps terminate v6 put"


def test_render_ftps_with_a_path_that_did_not_run_a_row() -> None:
    cases = [Case("curl-ftps", 4, False, "passthrough"), Case("curl-ftps", 4, True, "terminate")]
    saw = "AUTH TLS passed through, data window opened"
    ok = Outcome(True, 1 << 20, 0.5, "", saw)
    bad = Outcome(False, 0, 1.0, "curl epsv exit 64: curl: (64) Requested SSL level failed")
    results: dict[str, list[Outcome | None]] = {"ftpalg": [ok, bad], "kernel": [ok, None]}
    text = render_ftps(cases, results)
    assert text.startswith("FTPS:\n")
    header, rows = parse_table(text)
    assert header[:4] == ["tls", "mode", "ip", "dir"] and header[-2:] == ["kernel", "MB/s"]
    assert rows[0] == ["passthrough", "curl-ftps", "v4", "get", saw, "ok", "2.1", "ok", "2.1"]
    assert rows[1] == ["terminate", "curl-ftps", "v4", "put", "-", "FAIL [1]", "-", "-", "-"]
    assert "[1] ftpalg, curl-ftps terminate v4 put: curl epsv exit 64" in text
    assert "FTPS ftpalg: 1/2 ok; kernel: 1/1 ok" in text
    assert not all_ok(results) and all_ok({"kernel": [ok, None]})


# ---- the pcap reader -------------------------------------------------------------------------


def _tcp(sport: int, dport: int, seq: int, payload: bytes) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 512, 0, 0) + payload


def _v4(src: str, dst: str, tcp: bytes) -> bytes:
    ip = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        0,
        0,
        64,
        6,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    return b"\x02" * 12 + b"\x08\x00" + ip + tcp + b"\x00" * 6  # Ethernet padding after it


def _v6(tcp: bytes) -> bytes:
    ip = struct.pack(">IHBB16s16s", 0x60000000, len(tcp), 6, 64, b"\x20" * 16, b"\x30" * 16)
    return b"\x02" * 12 + b"\x86\xdd" + ip + tcp


def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return out


def test_pcap_reader_finds_the_rewritable_lines() -> None:
    c, s = "10.1.1.2", "203.0.113.10"
    frames = [
        _v4(c, s, _tcp(5000, 21, 1, b"USER x\r\nPO")),
        _v4(c, s, _tcp(5000, 21, 11, b"RT 10,1,1,2,4,1\r\n")),  # a line split over two segments
        _v4(c, s, _tcp(5000, 21, 11, b"RT 10,1,1,2,4,1\r\n")),  # its retransmission
        _v4(s, c, _tcp(21, 5000, 1, b"227 Entering Passive Mode (203,0,113,10,4,1).\r\n")),
        _v4(s, c, _tcp(21, 5000, 60, b"227-not this one\r\n229 (|||40001|)\r\n")),
        _v6(_tcp(6000, 21, 1, b"eprt |2|2001:db8::2|4000|\r\n")),
        _v4(c, s, _tcp(5000, 21, 40, b"")),  # a bare ACK
    ]
    lines = ftp_lines(parse_pcap(_pcap(frames)))
    assert lines == [
        ("client", b"PORT 10,1,1,2,4,1"),
        ("server", b"227 Entering Passive Mode (203,0,113,10,4,1)."),
        ("server", b"229 (|||40001|)"),
        ("client", b"eprt |2|2001:db8::2|4000|"),
    ]


def test_pcap_reader_tolerates_junk_and_truncation() -> None:
    assert parse_pcap(b"") == [] and parse_pcap(b"not a pcap file at all....") == []
    whole = _pcap([_v4("1.1.1.1", "2.2.2.2", _tcp(1, 21, 1, b"PORT 1,1,1,1,0,1\r\n"))])
    assert len(parse_pcap(whole)) == 1 and parse_pcap(whole[:-5]) == []


def test_failure_context_shows_server_log_and_ftpalg_warnings() -> None:
    class Server:
        kind = "vsftpd"

        def log_text(self) -> str:
            return 'a\nb\nFAIL DOWNLOAD: Client "203.0.113.1"\n'

    class Alg:
        def events(self) -> list[dict[str, Any]]:
            return [
                {"event": "rewrite", "level": "info"},
                {"event": "data_theft_refused", "level": "warning", "peer": "x"},
            ]

    lines = command.failure_context(Server(), Alg(), lines=2)  # type: ignore[arg-type]
    assert lines == [
        "vsftpd log: b",
        'vsftpd log: FAIL DOWNLOAD: Client "203.0.113.1"',
        'ftpalg: {"event": "data_theft_refused", "level": "warning", "peer": "x"}',
    ]
    assert command.failure_context(Server(), None, lines=1) == [  # type: ignore[arg-type]
        'vsftpd log: FAIL DOWNLOAD: Client "203.0.113.1"'
    ]
