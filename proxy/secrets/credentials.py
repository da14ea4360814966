"""ModelCredentials: the engine's CredentialSource over the secret backends and Google auth.

By a model's `model_auth_type`:

- `secret_manager`: `model_auth_id` is a secret_id of `google_ml.sm_secrets`; its
  `secret_path` is resolved (Secret Manager, `env:`, `file:`) and the value attached as the
  model's provider expects (`Authorization: Bearer`, Anthropic's `x-api-key`);
- `alloydb_service_agent_iam`: `Authorization: Bearer <the proxy's Google access token>`;
- NULL: no headers.

The secret path lives in the database the session talks to, so it reaches us with the model:
either the session builds a `SecretModelConfig` (a ModelConfig with the joined `secret_path`
column), or it passes `secret_path_for`, a lookup of a secret_id's path. Failures are
`ModelCallError`s naming the model and the secret_id; no message or log line carries a value.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

from proxy.engine.errors import ModelCallError, ModelConfigError
from proxy.engine.models import ModelConfig
from proxy.providers import provider_for

from .base import SecretError, SecretResolver
from .google_auth import TokenSource

log = logging.getLogger(__name__)

SECRET_MANAGER = "secret_manager"
SERVICE_AGENT_IAM = "alloydb_service_agent_iam"

SecretPathLookup = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretModelConfig(ModelConfig):
    """A ModelConfig with the `secret_path` of its `model_auth_id` (NULL when not registered).

    `SecretModelConfig.from_row` reads it from a row of
    `SELECT m.*, s.secret_path FROM google_ml.models m
     LEFT JOIN google_ml.sm_secrets s ON s.secret_id = m.model_auth_id`.
    """

    secret_path: str | None = None


class CredentialError(ModelCallError):
    """A model's credentials could not be obtained (the secret or token, not the model call)."""

    sqlstate: ClassVar[str] = "38000"

    def __init__(self, what: str, *, model_id: str | None, kind: str) -> None:
        super().__init__(what, model_id=model_id)
        self.kind = kind  # the SecretError kind: not_found, permission_denied, ...


class ModelCredentials:
    """CredentialSource for registered models (see the module docstring).

    `google` (a GoogleCredentials) serves `alloydb_service_agent_iam`; without it such models
    fail with a configuration error. `secret_path_for` is consulted when the model does not
    carry its `secret_path`.
    """

    def __init__(
        self,
        resolver: SecretResolver,
        google: TokenSource | None = None,
        *,
        secret_path_for: SecretPathLookup | None = None,
    ) -> None:
        self.resolver = resolver
        self.google = google
        self.secret_path_for = secret_path_for

    async def headers_for(self, model: ModelConfig) -> dict[str, str]:
        auth_type = (model.model_auth_type or "").strip().lower()
        if not auth_type:
            return {}
        if auth_type == SECRET_MANAGER:
            return await self._secret_headers(model)
        if auth_type == SERVICE_AGENT_IAM:
            return await self._google_headers(model)
        raise ModelConfigError(
            f"unsupported model_auth_type {model.model_auth_type!r} (expected "
            f"{SECRET_MANAGER} or {SERVICE_AGENT_IAM})",
            model_id=model.model_id,
        )

    async def _secret_headers(self, model: ModelConfig) -> dict[str, str]:
        secret_id = model.model_auth_id
        if not secret_id:
            raise ModelConfigError(
                f"model_auth_type is {SECRET_MANAGER} but model_auth_id (the secret_id) is "
                "not set",
                model_id=model.model_id,
            )
        path = await self._path_of(model, secret_id)
        log.debug("model %s: resolving secret %s (%s)", model.model_id, secret_id, path)
        try:
            value = await self.resolver.get(path)
        except SecretError as exc:
            raise CredentialError(
                f"cannot use secret {secret_id!r}: {exc.message}",
                model_id=model.model_id,
                kind=exc.kind,
            ) from None
        value = value.strip()
        problem = _header_problem(value)
        if problem is not None:
            raise CredentialError(
                f"secret {secret_id!r} ({path}) {problem}",
                model_id=model.model_id,
                kind="bad_payload",
            )
        provider = provider_for(model.model_provider, model_id=model.model_id)
        return provider.auth_headers(value)

    async def _path_of(self, model: ModelConfig, secret_id: str) -> str:
        path = getattr(model, "secret_path", None)
        if path is None and self.secret_path_for is not None:
            path = await self.secret_path_for(secret_id)
        if not path:
            raise ModelConfigError(
                f"secret {secret_id!r} named by model_auth_id is not registered "
                "(see google_ml.create_sm_secret)",
                model_id=model.model_id,
            )
        return str(path)

    async def _google_headers(self, model: ModelConfig) -> dict[str, str]:
        if self.google is None:
            raise ModelConfigError(
                f"model_auth_type {SERVICE_AGENT_IAM} needs Google credentials configured on "
                "the proxy (a service-account key file or Application Default Credentials)",
                model_id=model.model_id,
            )
        try:
            token = await self.google.token()
        except SecretError as exc:
            raise CredentialError(
                f"cannot get a Google access token: {exc.message}",
                model_id=model.model_id,
                kind=exc.kind,
            ) from None
        return {"Authorization": f"Bearer {token}"}


def _header_problem(value: str) -> str | None:
    """Why `value` cannot go into an HTTP header (None if it can), without quoting it."""
    if not value:
        return "is empty"
    if not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "contains characters an HTTP header cannot carry (control or non-ASCII)"
    return None
