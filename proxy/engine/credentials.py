"""Where a model call's authentication headers come from.

The engine asks a `CredentialSource` for the headers of each call and treats every value it
returns as a secret (scrubbed from error messages). Real sources (Secret Manager and the
proxy's other secret backends for `secret_manager`, Google credentials for
`alloydb_service_agent_iam`) live elsewhere; they turn a secret value into headers with the
provider's `auth_headers`, as `StaticCredentials` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from proxy.providers import provider_for

from .models import ModelConfig


class CredentialSource(Protocol):
    async def headers_for(self, model: ModelConfig) -> dict[str, str]:
        """Authentication headers for a call to `model` ({} for none)."""
        ...


class NoCredentials:
    """Calls go out without authentication headers."""

    async def headers_for(self, model: ModelConfig) -> dict[str, str]:
        return {}


class StaticCredentials:
    """Fixed secret values by model id (tests; keys given in the proxy's configuration).

    The value is attached as the model's provider expects it (`Authorization: Bearer`, or
    Anthropic's `x-api-key`).
    """

    def __init__(
        self, secrets: Mapping[str, str] | None = None, *, default: str | None = None
    ) -> None:
        self._secrets = dict(secrets or {})
        self._default = default

    async def headers_for(self, model: ModelConfig) -> dict[str, str]:
        secret = self._secrets.get(model.model_id, self._default)
        if secret is None:
            return {}
        return provider_for(model.model_provider, model_id=model.model_id).auth_headers(secret)
