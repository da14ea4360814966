"""The Google Secret Manager backend: `projects/P/secrets/S/versions/N` paths.

`GET {base_url}/v1/{path}:access` with the proxy's Google access token answers
`{"name": ..., "payload": {"data": <base64>, "dataCrc32c": "<int64>"}}`; the value is the
decoded data as UTF-8, checked against its CRC32C when the service sends one. 429 and 5xx
answers, connection failures and corrupted payloads are retried a few times; a 401 gets one
retry with a fresh token; 403 and 404 are reported at once, naming the path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from proxy.engine.retry import is_retryable_status, parse_retry_after

from .base import SECRET_MANAGER_PATH, SecretError
from .google_auth import TokenSource

DEFAULT_BASE_URL = "https://secretmanager.googleapis.com"
MAX_MESSAGE = 300  # characters of Secret Manager's own error message kept in ours

Sleep = Callable[[float], Awaitable[None]]


class SecretManagerSecrets:
    """Reads secret versions from Secret Manager's REST API with `tokens`' access tokens.

    `client` (optional) is an httpx.AsyncClient to use; otherwise one is made and closed by
    `aclose()`. `sleep` is injectable so tests of the retries do not wait.
    """

    def __init__(
        self,
        tokens: TokenSource,
        *,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
        backoff: float = 0.25,
        max_retry_after: float = 5.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._client = client
        self._owns_client = client is None
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_retry_after = max_retry_after
        self._sleep = sleep

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def get(self, path: str) -> str:
        if not SECRET_MANAGER_PATH.match(path):
            raise SecretError(
                f"invalid Secret Manager path {path!r}: expected "
                "projects/PROJECT/secrets/SECRET/versions/VERSION",
                path=path,
                kind="invalid_path",
            )
        url = f"{self.base_url}/v1/{path}:access"
        attempt = 0
        token_refreshed = False
        refresh_token = False
        while True:
            attempt += 1
            try:
                token = await self._tokens.token(refresh=refresh_token)
            except SecretError as exc:
                raise SecretError(
                    f"cannot read secret {path}: {exc.message}", path=path, kind=exc.kind
                ) from None
            refresh_token = False
            retry_after: float | None = None
            try:
                response = await self._http().get(
                    url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
                )
            except httpx.HTTPError as exc:
                failure = SecretError(
                    f"cannot read secret {path}: Secret Manager at {self.base_url} did not "
                    f"answer ({type(exc).__name__})",
                    path=path,
                    kind="unavailable",
                )
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return _decode(path, response)
                    except _Corrupt as exc:  # damaged in transit: worth another try
                        failure = exc.error
                elif status == 401 and not token_refreshed:
                    token_refreshed = refresh_token = True
                    attempt -= 1  # a stale token is not the service's failure
                    continue
                elif is_retryable_status(status):
                    failure = SecretError(
                        f"cannot read secret {path}: Secret Manager returned HTTP {status}: "
                        f"{_message(response)}",
                        path=path,
                        kind="unavailable",
                    )
                    retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                else:
                    raise _status_error(path, status, _message(response))
            if attempt >= self._max_attempts:
                raise failure
            if retry_after is not None and retry_after > self._max_retry_after:
                raise failure
            delay = retry_after if retry_after is not None else self._backoff * 2 ** (attempt - 1)
            await self._sleep(delay)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client


class _Corrupt(Exception):
    def __init__(self, error: SecretError) -> None:
        super().__init__(error.message)
        self.error = error


def _decode(path: str, response: httpx.Response) -> str:
    """The secret value of an access response (SecretError for a malformed one)."""

    def bad(what: str) -> SecretError:
        return SecretError(
            f"cannot read secret {path}: Secret Manager's answer {what}",
            path=path,
            kind="bad_payload",
        )

    try:
        body: Any = response.json()
    except ValueError:
        raise _Corrupt(bad("is not JSON")) from None
    payload = body.get("payload") if isinstance(body, dict) else None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, str):
        raise bad("has no payload.data")
    raw = _b64decode(data)
    if raw is None:
        raise _Corrupt(bad("has payload.data that is not base64"))
    checksum = payload.get("dataCrc32c") if isinstance(payload, dict) else None
    if checksum is not None:
        try:
            expected = int(checksum)
        except (TypeError, ValueError):
            raise _Corrupt(bad("has a payload.dataCrc32c that is not a number")) from None
        if crc32c(raw) != expected:
            raise _Corrupt(bad("failed its CRC32C check (payload corrupted in transit)"))
    text = _utf8(raw)
    if text is None:
        raise SecretError(
            f"secret {path} is not UTF-8 text (a binary secret cannot be used as a key)",
            path=path,
            kind="bad_payload",
        )
    return text


def _b64decode(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _utf8(raw: bytes) -> str | None:
    """`raw` decoded, or None: the codec's error quotes (and holds) the secret's bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _status_error(path: str, status: int, message: str) -> SecretError:
    said = f"(Secret Manager: {message})"
    if status == 404:
        return SecretError(f"secret {path} not found {said}", path=path, kind="not_found")
    if status == 403:
        return SecretError(
            f"permission denied reading secret {path}: the proxy's Google credentials need "
            f"roles/secretmanager.secretAccessor on it {said}",
            path=path,
            kind="permission_denied",
        )
    if status == 401:
        return SecretError(
            f"Secret Manager rejected the proxy's Google credentials reading secret {path} "
            f"{said}",
            path=path,
            kind="unauthenticated",
        )
    if status == 400:
        return SecretError(
            f"Secret Manager refused the request for secret {path} {said}",
            path=path,
            kind="invalid_path",
        )
    return SecretError(
        f"cannot read secret {path}: Secret Manager returned HTTP {status} {said}",
        path=path,
        kind="unavailable",
    )


def _message(response: httpx.Response) -> str:
    """Google's error message ({"error": {"message"}}), else the status's reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message.strip():
        message = response.reason_phrase or f"HTTP {response.status_code}"
    message = " ".join(message.split())
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as Secret Manager's `dataCrc32c` (pure Python: secrets
    are small)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
