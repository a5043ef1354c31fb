"""`tls = terminate` configuration (docs/ftps.md): the keys and flags, the one-line errors,
and the server context (TLS 1.2+, loaded again on each `load`)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from ftpalg.ops.config import ConfigError, build_config
from ftpalg.ops.values import DEFAULT_TLS_CIPHERS
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
        (["--tls-upstream", *UP], "--tls-upstream: needs tls = terminate"),
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
    assert not config.tls_upstream and build_config([*argv, "--tls-upstream"])[0].tls_upstream
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


# ---- tls_ciphers and tls_min_version ---------------------------------------------------------


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str, str]:
    """A TLS handshake in memory: (version, cipher) the two agree on; SSLError if none."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="x")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, end, out, peer_in in (("c", c, c_out, s_in), ("s", s, s_out, c_in)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            version, cipher = c.version(), c.cipher()
            assert version is not None and cipher is not None
            return version, cipher[0]
    raise AssertionError("handshake did not finish")


def client_context(max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def terminate(cert: str, key: str, *more: str) -> list[str]:
    return ["--tls", "terminate", "--tls-cert", cert, "--tls-key", key, *UP, *more]


def test_default_context_tls12_suites_are_forward_secret_aead(tmp_path: Path) -> None:
    cert, key = pem(tmp_path, "d")
    config, _ = build_config(terminate(cert, key))
    assert (config.tls_ciphers, config.tls_min_version) == (DEFAULT_TLS_CIPHERS, "1.2")
    ctx = tls_context.load(config)
    assert ctx is not None
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] in ("kx-ecdhe", "kx-dhe") for c in tls12)
    assert handshake(ctx, client_context())[0] == "TLSv1.3"
    assert handshake(ctx, client_context(ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"


def test_tls_ciphers_choose_the_tls12_suites(tmp_path: Path) -> None:
    cert, key = pem(tmp_path, "c")
    config, _ = build_config(terminate(cert, key, "--tls-ciphers", "ECDHE+CHACHA20"))
    assert config.tls_ciphers == "ECDHE+CHACHA20"
    ctx = tls_context.context_for(config)  # not loaded before with these settings: loaded now
    version, cipher = handshake(ctx, client_context(ssl.TLSVersion.TLSv1_2))
    assert (version, cipher) == ("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305")
    assert handshake(ctx, client_context())[0] == "TLSv1.3"  # TLS 1.3: OpenSSL's suites
    config, _ = build_config(terminate(cert, key, "--tls-ciphers", "ALL:@SECLEVEL=0"))
    ctx = tls_context.context_for(config)
    assert not [c for c in ctx.get_ciphers() if c["auth"] == "auth-null"]  # never anonymous
    assert not [c for c in ctx.get_ciphers() if c["symmetric"] == "cipher-null"]


def test_tls_min_version_13_refuses_tls12_clients(tmp_path: Path) -> None:
    cert, key = pem(tmp_path, "v")
    config, _ = build_config(terminate(cert, key, "--tls-min-version", "1.3"))
    ctx = tls_context.context_for(config)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert handshake(ctx, client_context())[0] == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(ctx, client_context(ssl.TLSVersion.TLSv1_2))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-ciphers", "NOPE"], "--tls-ciphers: 'NOPE': OpenSSL selects no TLS 1.2 cipher"),
        (["--tls-ciphers", "aNULL"], "OpenSSL selects no TLS 1.2 cipher suite"),
        (["--tls-ciphers", ""], "is not an OpenSSL cipher string"),
        (["--tls-ciphers", "A\nB"], "is not an OpenSSL cipher string"),
        (["--tls-min-version", "1.1"], "--tls-min-version: '1.1' is not 1.2 or 1.3"),
    ],
)
def test_tls_setting_errors_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(argv)
    assert message in str(info.value) and str(info.value).isprintable()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('tls_ciphers = "RC4-NOPE"', "tls_ciphers: 'RC4-NOPE': OpenSSL selects no TLS 1.2"),
        ("tls_ciphers = 3", "tls_ciphers: expected a string, got int"),
        ('tls_min_version = "1.0"', "tls_min_version: '1.0' is not 1.2 or 1.3"),
        ("tls_min_version = 1.1", "tls_min_version: '1.1' is not 1.2 or 1.3"),
        ("tls_min_version = true", "tls_min_version: expected a string, got bool"),
    ],
)
def test_check_config_names_a_bad_tls_setting(tmp_path: Path, toml: str, message: str) -> None:
    from ftpalg.ops.reload import check_config

    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    status, line = check_config(["--config", str(path)])
    assert status == 2 and message in line and "\n" not in line, line


def test_toml_tls_settings_and_check_config_loads_them(tmp_path: Path) -> None:
    from ftpalg.ops.reload import check_config

    cert, key = pem(tmp_path, "t")
    path = tmp_path / "c.toml"
    path.write_text(
        f'tls = "terminate"\ntls_cert = "{cert}"\ntls_key = "{key}"\nupstream = "10.0.0.5"\n'
        'tls_ciphers = "ECDHE+AESGCM"\ntls_min_version = 1.3\n'
    )
    config, _ = build_config(["--config", str(path)])
    assert (config.tls_ciphers, config.tls_min_version) == ("ECDHE+AESGCM", "1.3")
    status, line = check_config(["--config", str(path)])
    assert status == 0, line
    assert tls_context.context_for(config).minimum_version == ssl.TLSVersion.TLSv1_3


def test_upstream_context_follows_the_tls_settings(tmp_path: Path) -> None:
    """tls_upstream: ftpalg's client context has the same floor and TLS 1.2 suites, and does
    not verify the server (a legacy server's self-signed certificate)."""
    cert, key = pem(tmp_path, "u")
    config, _ = build_config(terminate(cert, key, "--tls-upstream", "--tls-min-version", "1.3"))
    ctx = tls_context.upstream_context(config)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3 and ctx.verify_mode == ssl.CERT_NONE
    assert tls_context.upstream_context(config) is ctx  # one per setting
    server = tls_context.context_for(config)
    assert handshake(server, ctx)[0] == "TLSv1.3"
    config, _ = build_config(terminate(cert, key, "--tls-ciphers", "ECDHE+CHACHA20"))
    tls12 = [
        c for c in tls_context.upstream_context(config).get_ciphers() if c["protocol"] == "TLSv1.2"
    ]
    assert tls12 and all("CHACHA20" in c["name"] for c in tls12), tls12
