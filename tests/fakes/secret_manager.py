"""Fake Google Secret Manager: ``GET /v1/projects/{p}/secrets/{s}/versions/{v}:access``.

Checked against (search tool, corpora docs/issues):
- Secret Manager REST reference, ``SecretPayload`` (cloud.google.com/secret-manager/docs/
  reference/rest/v1/SecretPayload): ``{"data": string, "dataCrc32c": string}``; ``data`` is
  base64 (proto ``bytes``), ``dataCrc32c`` an int64 (JSON string) CRC32C that the service
  computes when none was supplied (client library docs for ``data_crc32c``). The access
  response is ``{"name": "projects/*/secrets/*/versions/*", "payload": SecretPayload}``;
  the name carries the project NUMBER and the resolved version number (``latest`` -> "3").
- Errors: Google's error model (cloud.google.com/apis/design/errors); 404 NOT_FOUND for an
  unknown secret or version, 401 UNAUTHENTICATED without a valid Bearer token.

CRC32C (Castagnoli) is computed for real below (check: crc32c(b"123456789") == 0xE3069283).
"""

from __future__ import annotations

import base64
import re
from typing import Any

from .base import FakeProvider, RecordedRequest, Response, google_auth, google_error

_PATH = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/secrets/(?P<secret>[^/]+)/versions/(?P<version>[^/:]+):access$"
)


def _table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as Secret Manager reports in ``dataCrc32c``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class FakeSecretManager(FakeProvider):
    """``secrets`` maps ``"projects/{p}/secrets/{s}"`` (or just ``"{s}"``, any project) to
    one value (version 1) or a list of values (versions 1..n; ``latest`` is the last)."""

    def __init__(
        self,
        secrets: dict[str, str | bytes | list[str | bytes]] | None = None,
        token: str | None = "secret-manager-test-token",
        *,
        project_number: str = "123456789012",
        **kwargs: Any,
    ):
        self.secrets: dict[str, str | bytes | list[str | bytes]] = dict(secrets or {})
        self.project_number = project_number
        super().__init__(token, **kwargs)

    def check_auth(self, request: RecordedRequest) -> Response | None:
        return google_auth(request, self.credential)

    def error(self, status: int, message: str | None = None) -> Response:
        defaults = {
            404: "Requested entity was not found.",
            429: "Quota exceeded for quota metric 'Access requests' and limit 'Access requests per minute' of service 'secretmanager.googleapis.com'.",
            500: "Internal error encountered.",
            503: "The service is currently unavailable.",
        }
        return google_error(status, message or defaults.get(status, "Unknown error."))

    def wrong_shape(self, request: RecordedRequest, good: Any) -> Any:
        if isinstance(good, dict) and "name" in good:
            return {"name": good["name"], "payload": {}}  # no data
        return {"payload": None}

    def _versions(self, project: str, secret: str) -> list[bytes] | None:
        value = self.secrets.get(f"projects/{project}/secrets/{secret}", self.secrets.get(secret))
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        return [v.encode() if isinstance(v, str) else bytes(v) for v in values]

    def route(self, request: RecordedRequest) -> Response:
        m = _PATH.match(request.path)
        if m is None or request.method != "GET":
            return self.error(
                404, f"The requested URL {request.path} was not found on this server."
            )
        project, secret, version = m["project"], m["secret"], m["version"]
        number = project if project.isdigit() else self.project_number
        versions = self._versions(project, secret)
        if not versions:
            return self.error(
                404, f"Secret [projects/{number}/secrets/{secret}] not found or has no versions."
            )
        if version == "latest":
            index = len(versions)
        elif version.isdigit() and 1 <= int(version) <= len(versions):
            index = int(version)
        elif version.isdigit():
            return self.error(
                404,
                f"Secret Version [projects/{number}/secrets/{secret}/versions/{version}] not found.",
            )
        else:
            return self.error(
                400,
                f"Invalid resource field value in the request. Version id [{version}] is invalid.",
            )
        data = versions[index - 1]
        return Response(
            200,
            {
                "name": f"projects/{number}/secrets/{secret}/versions/{index}",
                "payload": {
                    "data": base64.b64encode(data).decode(),
                    "dataCrc32c": str(crc32c(data)),
                },
            },
        )
