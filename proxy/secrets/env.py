"""The `env:NAME` secret backend: a value from the proxy's environment.

For keys an operator hands the proxy directly (a container's secret env vars) rather than
through Secret Manager.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from .base import SecretError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EnvSecrets:
    """Reads `env:NAME` from `environ` (default: the process environment, read at each call)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    async def get(self, path: str) -> str:
        name = path.removeprefix("env:")
        if not path.startswith("env:") or not _NAME.match(name):
            raise SecretError(
                f"invalid environment secret path {path!r}: expected env:NAME",
                path=path,
                kind="invalid_path",
            )
        environ = os.environ if self._environ is None else self._environ
        value = environ.get(name)
        if value is None:
            raise SecretError(
                f"secret {path}: environment variable {name} is not set on the proxy",
                path=path,
                kind="not_found",
            )
        return value
