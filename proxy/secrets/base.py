"""Secret paths, the backend interface, and the resolver that caches and coalesces lookups.

A secret is named by a path whose form says where it lives:

- ``projects/P/secrets/S/versions/N`` -> Google Secret Manager (what ``google_ml.sm_secrets``
  stores, as in AlloyDB);
- ``env:NAME`` -> the proxy's environment variable NAME;
- ``file:/path`` -> the contents of a file on the proxy's host.

`SecretResolver` sends each path to its backend, keeps values for a short time (many model
calls a second must not each cost a Secret Manager request) and lets concurrent requests for
the same path share one fetch. Errors are `SecretError`s: their messages name the path and say
what went wrong, and never carry a secret value.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from typing import Protocol

Clock = Callable[[], float]

DEFAULT_TTL = 300.0  # seconds a resolved value is reused

SECRET_MANAGER = "secret_manager"
ENV = "env"
FILE = "file"

SECRET_MANAGER_PATH = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")


class SecretError(Exception):
    """A secret could not be resolved. The message names the path, never the value.

    `kind` says why: ``invalid_path``, ``not_found``, ``permission_denied``,
    ``unauthenticated``, ``unavailable`` (transient; retries were exhausted) or
    ``bad_payload``.
    """

    def __init__(self, message: str, *, path: str | None = None, kind: str = "unavailable"):
        super().__init__(message)
        self.message = message
        self.path = path
        self.kind = kind

    def __str__(self) -> str:
        return self.message


class SecretBackend(Protocol):
    async def get(self, path: str) -> str:
        """The current value of the secret at `path` (raises SecretError)."""
        ...


def scheme_of(path: str) -> str:
    """Which backend serves `path`: SECRET_MANAGER, ENV or FILE (SecretError otherwise)."""
    if path.startswith("env:"):
        return ENV
    if path.startswith("file:"):
        return FILE
    if path.startswith("projects/"):
        if not SECRET_MANAGER_PATH.match(path):
            raise SecretError(
                f"invalid Secret Manager path {path!r}: expected "
                "projects/PROJECT/secrets/SECRET/versions/VERSION",
                path=path,
                kind="invalid_path",
            )
        return SECRET_MANAGER
    raise SecretError(
        f"unsupported secret path {path!r}: expected projects/P/secrets/S/versions/N, "
        "env:NAME or file:/path",
        path=path,
        kind="invalid_path",
    )


class SecretResolver:
    """Resolves secret paths through the backend of their scheme, with a TTL cache.

    `backends` maps SECRET_MANAGER / ENV / FILE to a backend (a scheme without one is refused
    with a clear error). Values are reused for `ttl` seconds of `clock` (0 disables the cache);
    failures are not cached. Concurrent `get`s of one path share a single fetch, and a caller
    that is cancelled does not cancel the fetch for the others.
    """

    def __init__(
        self,
        backends: Mapping[str, SecretBackend],
        *,
        ttl: float = DEFAULT_TTL,
        clock: Clock = time.monotonic,
    ) -> None:
        if ttl < 0:
            raise ValueError("ttl must be >= 0")
        self._backends = dict(backends)
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}  # path -> (value, expires at)
        self._inflight: dict[str, asyncio.Task[str]] = {}

    async def get(self, path: str) -> str:
        """The value of the secret at `path`, from the cache when still fresh."""
        cached = self._cache.get(path)
        if cached is not None:
            value, expires = cached
            if self._clock() < expires:
                return value
            del self._cache[path]
        task = self._inflight.get(path)
        if task is None:
            backend = self._backend_for(path)
            task = asyncio.create_task(self._fetch(backend, path), name=f"secret fetch {path}")
            self._inflight[path] = task
            task.add_done_callback(lambda t: self._done(path, t))
        return await asyncio.shield(task)

    def invalidate(self, path: str | None = None) -> None:
        """Forget the cached value of `path` (of every path when None)."""
        if path is None:
            self._cache.clear()
        else:
            self._cache.pop(path, None)

    async def aclose(self) -> None:
        """Close the backends that hold connections (those with an `aclose`)."""
        for backend in self._backends.values():
            close = getattr(backend, "aclose", None)
            if close is not None:
                await close()

    def _backend_for(self, path: str) -> SecretBackend:
        scheme = scheme_of(path)
        backend = self._backends.get(scheme)
        if backend is None:
            raise SecretError(
                f"secret path {path!r} needs the {scheme} secret backend, which is not "
                "configured on this proxy",
                path=path,
                kind="invalid_path",
            )
        return backend

    async def _fetch(self, backend: SecretBackend, path: str) -> str:
        value = await backend.get(path)
        if self._ttl > 0:
            self._cache[path] = (value, self._clock() + self._ttl)
        return value

    def _done(self, path: str, task: asyncio.Task[str]) -> None:
        if self._inflight.get(path) is task:
            del self._inflight[path]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone away
