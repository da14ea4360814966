"""Fake self-hosted model endpoint (model_provider 'custom'), as in the AlloyDB guide's example.

The guide's custom text embedding endpoint (`https://cymbal.com/models/text/embeddings/v1`)
takes `{"prompt": ["text", ...]}` and answers one embedding per prompt, as an array of arrays
(`[[0.35, -0.36, ...]]`); its transform functions build that body and take `response_json->0`.
Served here at any path ending in `/embeddings/v1` (or `/embeddings`).

Any other path is a generic model: it answers `{"received": <the request body>, "path": ...}`,
so a test can check what `predict_row` sent.

A self-hosted endpoint has no fixed auth scheme; with a `credential`, requests must carry
`Authorization: Bearer <credential>`, and the 401 echoes what it got (as careless servers do),
so tests can check the proxy scrubs it. `required_headers` are further headers every request
must carry (400 otherwise), like the guide's `version: 2024-01-01`.
"""

from __future__ import annotations

from typing import Any

from .base import FakeProvider, RecordedRequest, Response
from .embeddings import embed

DIM = 8


class FakeCustom(FakeProvider):
    def __init__(
        self,
        credential: str | None = None,
        *,
        dim: int = DIM,
        required_headers: dict[str, str] | None = None,
        latency: float = 0.0,
    ) -> None:
        super().__init__(credential, latency=latency)
        self.dim = dim
        self.required_headers = dict(required_headers or {})

    @property
    def embeddings_url(self) -> str:
        return f"{self.base_url}/models/text/embeddings/v1"

    @property
    def generate_url(self) -> str:
        return f"{self.base_url}/models/generic/v1/generate"

    @staticmethod
    def expected_embedding(text: str, dim: int = DIM) -> list[float]:
        return embed(text, dim)

    def check_auth(self, request: RecordedRequest) -> Response | None:
        if self.credential is not None:
            got = request.headers.get("authorization")
            if got != f"Bearer {self.credential}":
                return self.error(401, f"invalid credentials: {got!r}")
        for name, value in self.required_headers.items():
            if request.headers.get(name.lower()) != value:
                return self.error(400, f"header {name} must be {value}")
        return None

    def route(self, request: RecordedRequest) -> Response:
        if request.method != "POST":
            return self.error(405)
        if request.path.rstrip("/").endswith(("/embeddings/v1", "/embeddings")):
            prompts = request.json.get("prompt") if isinstance(request.json, dict) else None
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                return self.error(400, 'expected {"prompt": ["text", ...]}')
            return Response(200, [embed(p, self.dim) for p in prompts])
        if request.json is None and request.body:
            return self.error(400, "request body is not JSON")
        return Response(200, {"received": request.json, "path": request.path})

    def error(self, status: int, message: str | None = None) -> Response:
        return Response(status, {"error": {"message": message or f"HTTP {status}", "code": status}})

    def wrong_shape(self, request: RecordedRequest, good: Any) -> Any:
        return {"embeddings": good}
