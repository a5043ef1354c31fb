"""`tls = terminate` configuration (docs/ftps.md): the keys and flags, the one-line errors,
and the server context (TLS 1.2+, loaded again on each `load`)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from ftpalg.ops.config import ConfigError, build_config
from ftpalg.proxy import tls_context

UP = ["--upstream", "10.0.0.5"]


def pem(tmp_path: Path, name: str) -> tuple[str, str]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    argv += ["-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(argv, check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls", "terminate", *UP], "--tls: terminate needs tls_cert and tls_key"),
        (["--tls", "terminate", "--tls-cert", "c", "--tls-key", "k"], "needs reverse mode"),
        (["--listen-implicit", "0.0.0.0:990", *UP], "needs tls = terminate"),
    ],
)
def test_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(argv)
    assert message in str(info.value) and str(info.value).isprintable()


def test_flags() -> None:
    argv = ["--tls", "terminate", "--tls-cert", "c.pem", "--tls-key", "k.pem", *UP]
    config, _ = build_config([*argv, "--require-tls", "--listen-implicit", "[::]:990"])
    assert (config.tls_cert, config.tls_key, config.require_tls) == ("c.pem", "k.pem", True)
    assert [str(e) for e in config.listen_implicit] == ["[::]:990"]


def test_context_is_tls12_plus_and_reloaded(tmp_path: Path) -> None:
    cert, key = pem(tmp_path, "one")
    argv = ["--tls", "terminate", "--tls-cert", cert, "--tls-key", key, *UP]
    config, _ = build_config(argv)
    first = tls_context.load(config)
    assert first is not None and first.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls_context.context_for(config) is first  # new sessions: the loaded one
    second = tls_context.load(config)  # SIGHUP: the files are read again
    assert second is not first and tls_context.context_for(config) is second
    Path(cert).write_text("garbage\n")
    with pytest.raises(ConfigError, match="tls_cert: cannot use"):
        tls_context.load(config)
    assert tls_context.context_for(config) is second  # a failed reload changes nothing
