"""`tls = terminate`: the server-side TLS context ftpalg presents to FTPS clients.

How this works. One `ssl.SSLContext` per configuration: TLS 1.2 and 1.3 only, forward-secret
AEAD cipher suites for TLS 1.2 (TLS 1.3's are all modern), no compression, the server's
cipher order. The same context serves a session's control connection and its data
connections, so a client that resumes the control connection's TLS session on a data
connection (FileZilla, curl, lftp; what vsftpd's `require_ssl_reuse` demands) finds it in the
context's session cache or in its own ticket. The context is loaded when the configuration is
(start, `--check-config`, SIGHUP: `ftpalg/ops/reload.py`), before privileges are dropped at
start; a SIGHUP reads the files again, and sessions opened from then on use the new
certificate (running ones keep theirs). A file that cannot be loaded is a one-line
configuration error.
"""

from __future__ import annotations

import ssl

from ftpalg.ops.config import Config, ConfigError

CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"
HANDSHAKE_TIMEOUT = 30.0  # seconds a client gets for its TLS handshake

_loaded: tuple[tuple[str, str], ssl.SSLContext] | None = None  # (cert, key): the last loaded


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS_TLS12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    return ctx


def load(config: Config) -> ssl.SSLContext | None:
    """The context of `config` (None unless tls = terminate), loaded now; ConfigError (one
    line) when the certificate or key cannot be used."""
    global _loaded
    if config.tls != "terminate":
        return None
    assert config.tls_cert is not None and config.tls_key is not None  # Config checks
    try:
        ctx = server_context(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        msg = f"tls_cert: cannot use {config.tls_cert} with {config.tls_key}: {why}"
        raise ConfigError(msg, key="tls_cert") from None
    _loaded = ((config.tls_cert, config.tls_key), ctx)
    return ctx


def context_for(config: Config) -> ssl.SSLContext:
    """The context for a new session under `config`: the one last loaded from its files, or
    loaded now (a configuration that never went through `load`)."""
    if _loaded is not None and _loaded[0] == (config.tls_cert, config.tls_key):
        return _loaded[1]
    ctx = load(config)
    assert ctx is not None
    return ctx
