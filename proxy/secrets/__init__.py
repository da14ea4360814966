"""Secrets and credentials: where the keys of model calls come from.

`SecretResolver` (base) resolves secret paths through one backend a scheme: Google Secret
Manager (`secret_manager`), environment variables (`env`), files (`file`), with a short cache.
`GoogleCredentials` (google_auth) gives the proxy's Google access tokens. `ModelCredentials`
(credentials) puts both behind the engine's `CredentialSource`.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from .base import (
    DEFAULT_TTL,
    ENV,
    FILE,
    SECRET_MANAGER,
    Clock,
    SecretBackend,
    SecretError,
    SecretResolver,
    scheme_of,
)
from .credentials import CredentialError, ModelCredentials, SecretModelConfig
from .env import EnvSecrets
from .file import FileSecrets
from .google_auth import GoogleAuthError, GoogleCredentials, TokenSource
from .secret_manager import DEFAULT_BASE_URL, SecretManagerSecrets, crc32c

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TTL",
    "ENV",
    "FILE",
    "SECRET_MANAGER",
    "CredentialError",
    "EnvSecrets",
    "FileSecrets",
    "GoogleAuthError",
    "GoogleCredentials",
    "ModelCredentials",
    "SecretBackend",
    "SecretError",
    "SecretManagerSecrets",
    "SecretModelConfig",
    "SecretResolver",
    "TokenSource",
    "crc32c",
    "default_resolver",
    "scheme_of",
]


def default_resolver(
    google: TokenSource | None,
    *,
    secret_manager_base_url: str = DEFAULT_BASE_URL,
    client: httpx.AsyncClient | None = None,
    environ: Mapping[str, str] | None = None,
    ttl: float = DEFAULT_TTL,
    clock: Clock | None = None,
) -> SecretResolver:
    """A resolver with all three backends (Secret Manager only when `google` is given)."""
    backends: dict[str, SecretBackend] = {ENV: EnvSecrets(environ), FILE: FileSecrets()}
    if google is not None:
        backends[SECRET_MANAGER] = SecretManagerSecrets(
            google, base_url=secret_manager_base_url, client=client
        )
    if clock is None:
        return SecretResolver(backends, ttl=ttl)
    return SecretResolver(backends, ttl=ttl, clock=clock)
