"""Errors of a model call, ready to become a PostgreSQL ErrorResponse.

Each class carries the SQLSTATE the session reports and a message that names the model and says
what went wrong in the provider's own words where there are any. The engine knows the secret
values a call used and scrubs them from every message (`ModelCallError.redact`) before the error
leaves it, so a provider that echoes an API key back cannot leak it into a client's error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

REDACTED = "***"
MIN_SECRET_LENGTH = 4  # shorter values would blot out ordinary words


class ModelCallError(Exception):
    """A model call failed. `sqlstate` and `str(error)` go into the client's ErrorResponse."""

    sqlstate: ClassVar[str] = "38000"  # external_routine_exception

    def __init__(
        self, what: str, *, model_id: str | None = None, detail: str | None = None
    ) -> None:
        self.model_id = model_id
        self.what = what  # the message without the model's name
        self.message = f'model "{model_id}": {what}' if model_id is not None else what
        self.detail = detail
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def redact(self, secrets: Iterable[str]) -> None:
        """Replace every occurrence of a secret value in the message and detail by '***'."""
        secrets = list(secrets)
        self.message = scrub(self.message, secrets)
        self.what = scrub(self.what, secrets)
        if self.detail is not None:
            self.detail = scrub(self.detail, secrets)
        self.args = (self.message,)


class ProviderError(ModelCallError):
    """The provider answered with an HTTP error; `provider_message` is its own explanation."""

    def __init__(
        self, status: int, provider_message: str, *, provider: str, model_id: str | None
    ) -> None:
        self.status = status
        self.provider = provider
        self.provider_message = provider_message
        super().__init__(
            f"{provider} returned HTTP {status}: {provider_message}", model_id=model_id
        )

    def redact(self, secrets: Iterable[str]) -> None:
        secrets = list(secrets)
        super().redact(secrets)
        self.provider_message = scrub(self.provider_message, secrets)


class ModelTimeout(ModelCallError):
    """No answer before the call's deadline (or every attempt timed out)."""

    sqlstate: ClassVar[str] = "57014"  # query_canceled, as for statement_timeout


class ModelUnavailable(ModelCallError):
    """The provider could not be reached (connection refused, reset, DNS, TLS) on every attempt."""


class BadModelResponse(ModelCallError):
    """The provider answered 2xx with something that is not what its API promises."""


class ModelConfigError(ModelCallError):
    """The model's registration cannot be served (unsupported provider, missing project, ...)."""

    sqlstate: ClassVar[str] = "22023"  # invalid_parameter_value


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value (longest first) replaced by '***'."""
    for secret in sorted(
        {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
    ):
        text = text.replace(secret, REDACTED)
    return text


def secret_values(headers: Mapping[str, str]) -> set[str]:
    """The secret parts of authentication header values: each value and its token after a scheme."""
    found: set[str] = set()
    for value in headers.values():
        value = value.strip()
        if not value:
            continue
        found.add(value)
        scheme, _, token = value.partition(" ")
        if token.strip():
            found.add(token.strip())
    return found
