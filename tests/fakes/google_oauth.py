"""Fake Google OAuth 2.0 token endpoint: ``POST /token`` with the JWT-bearer grant.

A service-account key whose ``token_uri`` points here makes google-auth fetch its access
tokens from this server. Checked against (search tool, corpora docs/issues) and google-auth's
own ``google/oauth2/_client.py``:

- request: ``POST {token_uri}``, ``Content-Type: application/x-www-form-urlencoded``, body
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`` (RFC 7523 §2.1);
  the JWT is RS256-signed with the key's ``private_key`` (header ``kid`` = ``private_key_id``),
  claims ``iss`` (client_email), ``scope``, ``aud`` (https://oauth2.googleapis.com/token:
  google-auth always uses Google's endpoint there, whatever ``token_uri`` is), ``iat``, ``exp``;
- answer: ``{"access_token": "...", "expires_in": 3599, "token_type": "Bearer"}``;
- errors: 400 ``{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}``
  (also "unsupported_grant_type", "invalid_scope"), 401 ``invalid_client`` for an unknown
  service account.

The signature is verified for real when the test registers the account's public key
(``accounts``: client_email -> PEM or cryptography public key).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .base import FakeProvider, RecordedRequest, Response

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class FakeGoogleOAuth(FakeProvider):
    """Issues ``access_token`` (changeable at any time) for valid JWT-bearer assertions.

    ``accounts`` maps a service account's client_email to its public key; an assertion from
    an account not listed gets 401 ``invalid_client`` unless ``accounts`` is None (then any
    issuer is accepted and signatures are not checked).
    """

    def __init__(
        self,
        accounts: dict[str, Any] | None = None,
        *,
        access_token: str = "ya29.fake-access-token",
        expires_in: int = 3599,
        **kwargs: Any,
    ):
        self.accounts = {
            email: (
                serialization.load_pem_public_key(key.encode() if isinstance(key, str) else key)
                if isinstance(key, str | bytes)
                else key
            )
            for email, key in (accounts or {}).items()
        }
        self.check_signatures = accounts is not None
        self.access_token = access_token
        self.expires_in = expires_in
        self.issued: list[dict[str, Any]] = []  # the claims of each assertion answered
        super().__init__(None, **kwargs)

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def error(self, status: int, message: str | None = None) -> Response:
        kinds = {400: "invalid_request", 401: "invalid_client", 429: "rate_limit_exceeded"}
        error = kinds.get(status, "server_error" if status >= 500 else "invalid_request")
        return Response(
            status, {"error": error, "error_description": message or "Fake OAuth error."}
        )

    def wrong_shape(self, request: RecordedRequest, good: Any) -> Any:
        return {"token_type": "Bearer", "expires_in": self.expires_in}  # no access_token

    def _oauth_error(self, status: int, error: str, description: str) -> Response:
        return Response(status, {"error": error, "error_description": description})

    def route(self, request: RecordedRequest) -> Response:
        if request.method != "POST" or request.path != "/token":
            return Response(404, b"Not Found", content_type="text/html")
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return self._oauth_error(400, "invalid_request", "Bad Request")
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        grant_type = form.get("grant_type", "")
        if grant_type != JWT_BEARER:
            return self._oauth_error(
                400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}"
            )
        claims = self._verify(form.get("assertion", ""))
        if isinstance(claims, Response):
            return claims
        self.issued.append(claims)
        return Response(
            200,
            {
                "access_token": self.access_token,
                "expires_in": self.expires_in,
                "token_type": "Bearer",
            },
        )

    def _verify(self, assertion: str) -> dict[str, Any] | Response:
        invalid = self._oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64url(header_b64))
            claims = json.loads(_b64url(claims_b64))
            signature = _b64url(signature_b64)
        except ValueError:
            return self._oauth_error(400, "invalid_grant", "Invalid JWT.")
        if header.get("alg") != "RS256" or not isinstance(claims, dict):
            return invalid
        if self.check_signatures:
            key = self.accounts.get(claims.get("iss", ""))
            if key is None:
                return self._oauth_error(401, "invalid_client", "The OAuth client was not found.")
            assert isinstance(key, rsa.RSAPublicKey)
            try:
                key.verify(
                    signature,
                    f"{header_b64}.{claims_b64}".encode(),
                    padding.PKCS1v15(),
                    hashes.SHA256(),
                )
            except InvalidSignature:
                return invalid
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_uri):
            return self._oauth_error(400, "invalid_grant", "Invalid JWT: audience mismatch.")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(iat, int)
            or not isinstance(exp, int)
            or exp - iat > 3600
            or exp < now - 300
            or iat > now + 300
        ):
            return self._oauth_error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        if not claims.get("scope"):
            return self._oauth_error(
                400, "invalid_scope", "Empty or missing scope not allowed."
            )
        return claims
