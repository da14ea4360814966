"""The `file:/path` secret backend: the contents of a file on the proxy's host.

For mounted secrets (Kubernetes secret volumes, Docker secrets). The file is read at each
fetch (the resolver caches), as UTF-8, with one trailing newline removed: files written by
`echo` or an editor end with one that is not part of the key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .base import SecretError


class FileSecrets:
    """Reads `file:/absolute/path` (also `file:///absolute/path`)."""

    async def get(self, path: str) -> str:
        name = path.removeprefix("file:")
        if name.startswith("//"):
            name = name[2:]  # file:///etc/key, the URL spelling
        if not path.startswith("file:") or not name.startswith("/"):
            raise SecretError(
                f"invalid file secret path {path!r}: expected file:/absolute/path",
                path=path,
                kind="invalid_path",
            )
        return await asyncio.to_thread(_read, path, Path(name))


def _read(path: str, file: Path) -> str:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise SecretError(
            f"secret {path}: file {file} does not exist", path=path, kind="not_found"
        ) from None
    except PermissionError:
        raise SecretError(
            f"secret {path}: the proxy may not read file {file}",
            path=path,
            kind="permission_denied",
        ) from None
    except OSError as exc:  # a directory, an I/O error: the OS's words carry no content
        raise SecretError(
            f"secret {path}: cannot read file {file}: {exc.strerror or type(exc).__name__}",
            path=path,
            kind="unavailable",
        ) from None
    text = _utf8(data)
    if text is None:
        raise SecretError(
            f"secret {path}: file {file} is not UTF-8 text", path=path, kind="bad_payload"
        )
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _utf8(data: bytes) -> str | None:
    """`data` decoded, or None: the codec's error quotes (and holds) the secret's bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
