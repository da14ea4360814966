"""The proxy's own Google credentials: OAuth access tokens for Vertex AI and Secret Manager.

`alloydb_service_agent_iam` models (Vertex AI) and Secret Manager calls are authenticated as
the proxy, the way AlloyDB uses its service agent: with a service-account JSON key file or
Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's user credentials,
the metadata server on Google Cloud), through the `google-auth` library.

google-auth is synchronous: loading and refreshing run in a worker thread, one at a time, and
its HTTP goes through a small httpx adapter (no `requests` dependency). The token is reused
until shortly before it expires, so model calls do not wait for the token endpoint.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import httpx
from google.oauth2 import service_account

from .base import Clock, SecretError

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_REFRESH_MARGIN = 300.0  # seconds before expiry a token is replaced
DEFAULT_TIMEOUT = 10.0  # seconds an HTTP request to the token endpoint may take
_LIFETIME_WITHOUT_EXPIRY = 3600.0  # how long to keep a token google-auth gave no expiry for
_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")

Loaded = tuple[google.auth.credentials.Credentials, str | None]  # credentials, project id


class GoogleAuthError(SecretError):
    """No Google access token could be obtained (no credentials, bad key, token endpoint error)."""

    def __init__(self, message: str, *, kind: str = "unauthenticated") -> None:
        super().__init__(message, kind=kind)


class TokenSource(Protocol):
    async def token(self, *, refresh: bool = False) -> str:
        """A valid OAuth access token; `refresh` forces a new one (e.g. after a 401)."""
        ...


class GoogleCredentials:
    """Access tokens from google-auth credentials, cached and refreshed in a worker thread.

    Build it with `from_service_account_file`, `from_service_account_info`,
    `application_default` or `from_key_file` (key file if given, else ADC). Nothing is loaded
    or fetched until the first `token()`. `clock` (Unix seconds by default) decides when the
    cached token is stale; `refresh_margin` is how long before expiry that happens.
    """

    def __init__(
        self,
        loader: Callable[[google.auth.transport.Request], Loaded],
        *,
        description: str,
        clock: Clock = time.time,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.description = description  # how messages name these credentials
        self._loader = loader
        self._clock = clock
        self._refresh_margin = refresh_margin
        self._timeout = timeout
        self._credentials: google.auth.credentials.Credentials | None = None
        self._project_id: str | None = None
        self._cached: tuple[str, float] | None = None  # token, stale after (clock)
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        self._client: httpx.Client | None = None

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_service_account_info(
        cls,
        info: Mapping[str, Any],
        *,
        scopes: Sequence[str] = (CLOUD_PLATFORM_SCOPE,),
        description: str = "the service-account key",
        **kwargs: Any,
    ) -> GoogleCredentials:
        info = dict(info)

        def load(request: google.auth.transport.Request) -> Loaded:
            return _service_account(info, scopes, description), info.get("project_id")

        return cls(load, description=description, **kwargs)

    @classmethod
    def from_service_account_file(
        cls,
        path: str | Path,
        *,
        scopes: Sequence[str] = (CLOUD_PLATFORM_SCOPE,),
        **kwargs: Any,
    ) -> GoogleCredentials:
        description = f"the service-account key file {path}"

        def load(request: google.auth.transport.Request) -> Loaded:
            info = _read_key_file(Path(path), description)
            return _service_account(info, scopes, description), info.get("project_id")

        return cls(load, description=description, **kwargs)

    @classmethod
    def application_default(
        cls, *, scopes: Sequence[str] = (CLOUD_PLATFORM_SCOPE,), **kwargs: Any
    ) -> GoogleCredentials:
        """Application Default Credentials, looked up at the first `token()`."""

        def load(request: google.auth.transport.Request) -> Loaded:
            try:
                credentials, project = google.auth.default(scopes=list(scopes), request=request)
            except google.auth.exceptions.GoogleAuthError as exc:
                raise GoogleAuthError(
                    f"no Google Application Default Credentials: {_reason(exc)}"
                ) from None
            return credentials, project

        return cls(load, description="Application Default Credentials", **kwargs)

    @classmethod
    def from_key_file(cls, key_file: str | Path | None, **kwargs: Any) -> GoogleCredentials:
        """The key file when one is configured, else Application Default Credentials."""
        if key_file:
            return cls.from_service_account_file(key_file, **kwargs)
        return cls.application_default(**kwargs)

    # -- use -------------------------------------------------------------------------------

    async def token(self, *, refresh: bool = False) -> str:
        """A valid access token (GoogleAuthError when none can be had)."""
        if not refresh and (token := self._fresh()) is not None:
            return token
        before = self._cached
        async with self._lock:
            if refresh and self._cached is not before and (token := self._fresh()) is not None:
                return token  # refreshed by another caller while this one waited
            if not refresh and (token := self._fresh()) is not None:
                return token
            return await asyncio.to_thread(self._refresh_sync)

    async def headers(self) -> dict[str, str]:
        """`Authorization: Bearer <token>`."""
        return {"Authorization": f"Bearer {await self.token()}"}

    async def project_id(self) -> str | None:
        """The project of the credentials (key file's project_id, or ADC's), loading them."""
        if self._credentials is None:
            async with self._lock:
                await asyncio.to_thread(self._load_sync)
        return self._project_id

    def close(self) -> None:
        """Close the HTTP client of the token requests."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- internals (the worker thread) -----------------------------------------------------

    def _fresh(self) -> str | None:
        cached = self._cached
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        return None

    def _request(self) -> google.auth.transport.Request:
        if self._client is None:
            self._client = httpx.Client(timeout=self._timeout)
        return _HttpxRequest(self._client, self._timeout)

    def _load_sync(self) -> google.auth.credentials.Credentials:
        with self._thread_lock:
            if self._credentials is None:
                self._credentials, self._project_id = self._loader(self._request())
            return self._credentials

    def _refresh_sync(self) -> str:
        credentials = self._load_sync()
        with self._thread_lock:
            try:
                credentials.refresh(self._request())
            except google.auth.exceptions.TransportError as exc:
                raise GoogleAuthError(
                    f"cannot reach Google's token endpoint for {self.description}: "
                    f"{_reason(exc)}",
                    kind="unavailable",
                ) from None
            except google.auth.exceptions.GoogleAuthError as exc:
                raise GoogleAuthError(
                    f"Google refused an access token for {self.description}: {_reason(exc)}"
                ) from None
            token = credentials.token
            if not isinstance(token, str) or not token:
                raise GoogleAuthError(f"Google returned no access token for {self.description}")
            lifetime = _lifetime(credentials.expiry)
            margin = min(self._refresh_margin, lifetime / 2)
            self._cached = (token, self._clock() + lifetime - margin)
            return token


class _HttpxResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxRequest(google.auth.transport.Request):
    """google-auth's transport interface over a synchronous httpx client."""

    def __init__(self, client: httpx.Client, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _HttpxResponse:
        try:
            response = self._client.request(
                method,
                url,
                content=body,
                headers=dict(headers or {}),
                timeout=timeout if timeout is not None else self._timeout,
            )
        except httpx.HTTPError as exc:
            raise google.auth.exceptions.TransportError(
                f"{type(exc).__name__}: {exc or 'no answer'}"
            ) from None
        return _HttpxResponse(response)


def _read_key_file(path: Path, description: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoogleAuthError(f"{description} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise GoogleAuthError(f"cannot read {description}: {reason}") from None
    try:
        info = json.loads(text)
    except ValueError:
        raise GoogleAuthError(f"{description} is not JSON") from None
    if not isinstance(info, dict):
        raise GoogleAuthError(f"{description} is not a JSON object")
    return info


def _service_account(
    info: dict[str, Any], scopes: Sequence[str], description: str
) -> service_account.Credentials:
    if info.get("type") != "service_account":
        raise GoogleAuthError(
            f'{description} is not a service-account key (its "type" is not "service_account")'
        )
    missing = [f for f in _SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(f), str)]
    if missing:
        raise GoogleAuthError(f"{description} lacks {', '.join(missing)}")
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=list(scopes))
    except Exception as exc:  # the key's parser: its words could quote the key
        raise GoogleAuthError(
            f"{description} has an unusable private key ({type(exc).__name__})"
        ) from None


def _lifetime(expiry: datetime.datetime | None) -> float:
    """Seconds until `expiry` (google-auth's naive UTC datetime)."""
    if expiry is None:
        return _LIFETIME_WITHOUT_EXPIRY
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.UTC)
    return max(0.0, (expiry - datetime.datetime.now(datetime.UTC)).total_seconds())


def _reason(exc: Exception) -> str:
    """google-auth's message, without the response data it attaches as further arguments."""
    first = exc.args[0] if exc.args else None
    text = first if isinstance(first, str) else type(exc).__name__
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")
