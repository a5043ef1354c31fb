"""`tls = terminate`: the server-side TLS context ftpalg presents to FTPS clients.

How this works. One `ssl.SSLContext` per configuration: TLS 1.2 and 1.3 only
(`tls_min_version = "1.3"`: 1.3 only), for TLS 1.2 forward-secret AEAD cipher suites or the
operator's `tls_ciphers` (OpenSSL's syntax; never unauthenticated or unencrypted ones: `!aNULL`
and `!eNULL` are appended), TLS 1.3's suites OpenSSL's own (all modern), no compression, the
server's cipher order. The same context serves a session's control connection and its data
connections, so a client that resumes the control connection's TLS session on a data
connection (FileZilla, curl, lftp; what vsftpd's `require_ssl_reuse` demands) finds it in the
context's session cache or in its own ticket. The context is loaded when the configuration is
(start, `--check-config`, SIGHUP: `ftpalg/ops/reload.py`), before privileges are dropped at
start; a SIGHUP reads the files again, and sessions opened from then on use the new
certificate (running ones keep theirs). A file that cannot be loaded is a one-line
configuration error.
"""

from __future__ import annotations

import functools
import ssl

from ftpalg.ops.config import Config, ConfigError
from ftpalg.ops.values import DEFAULT_TLS_CIPHERS, TLS_NEVER

HANDSHAKE_TIMEOUT = 30.0  # seconds a client gets for its TLS handshake
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# (cert, key, ciphers, min version) and the context last loaded from them
_loaded: tuple[tuple[str | None, ...], ssl.SSLContext] | None = None


def _key(config: Config) -> tuple[str | None, ...]:
    """What a context is made of: another value makes another context."""
    return (config.tls_cert, config.tls_key, config.tls_ciphers, config.tls_min_version)


def server_context(
    cert: str, key: str, ciphers: str = DEFAULT_TLS_CIPHERS, min_version: str = "1.2"
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[min_version]
    ctx.set_ciphers(ciphers + TLS_NEVER)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    return ctx


@functools.lru_cache(maxsize=4)
def _client_context(ciphers: str, min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # docs/ftps.md: tls_upstream
    ctx.minimum_version = VERSIONS[min_version]
    ctx.set_ciphers(ciphers + TLS_NEVER)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def upstream_context(config: Config) -> ssl.SSLContext:
    """`tls_upstream`: ftpalg's client context towards the server (the same versions and
    TLS 1.2 suites as towards clients; the server's certificate is not verified)."""
    return _client_context(config.tls_ciphers, config.tls_min_version)


def load(config: Config) -> ssl.SSLContext | None:
    """The context of `config` (None unless tls = terminate), loaded now; ConfigError (one
    line) when the certificate or key cannot be used."""
    global _loaded
    if config.tls != "terminate":
        return None
    assert config.tls_cert is not None and config.tls_key is not None  # Config checks
    try:
        ctx = server_context(
            config.tls_cert, config.tls_key, config.tls_ciphers, config.tls_min_version
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        msg = f"tls_cert: cannot use {config.tls_cert} with {config.tls_key}: {why}"
        raise ConfigError(msg, key="tls_cert") from None
    _loaded = (_key(config), ctx)
    return ctx


def context_for(config: Config) -> ssl.SSLContext:
    """The context for a new session under `config`: the one last loaded from its files, or
    loaded now (a configuration that never went through `load`)."""
    if _loaded is not None and _loaded[0] == _key(config):
        return _loaded[1]
    ctx = load(config)
    assert ctx is not None
    return ctx
