"""Named wrong answers for the embedding fakes: ``bad_shape_next(n, shape)``.

``bad_body_next`` gives a cut-off body or the one wrong shape a provider's fake chooses; a
client must also survive answers that are 200 and valid JSON but wrong in other ways. Each
fake that mixes this in (OpenAI, Vertex AI, Hugging Face) says what a shape is in its format:

- ``"short"``: one vector fewer than inputs (the fake's ``wrong_shape``);
- ``"missing"``: no vector array where the format puts it (``without_vectors``);
- ``"dims"``: the last vector one value shorter than the others (``mixed_dimensions``): a
  batch has two dimensions, a single input gets a vector of an unexpected dimension;
- ``"html"``: a 200 HTML page, as a captive portal or a misconfigured gateway answers.

Scripted like the other switches: queued in call order, one per request, before
authentication and routing (the shape is applied to whatever the fake would have answered).
"""

from __future__ import annotations

import json
from typing import Any

from .base import FakeProvider, RecordedRequest, Response, _Action

SHAPES = ("short", "missing", "dims", "html")

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in to the network</title></head>"
    b"<body><p>Please sign in to continue.</p></body></html>\n"
)


class BadShapes(FakeProvider):
    """Mixin for a fake provider: ``bad_shape_next`` and the per-format hooks."""

    def bad_shape_next(self, n: int = 1, shape: str = "short") -> None:
        """The next ``n`` requests get 200 with the named wrong answer (see the module)."""
        if shape not in SHAPES:
            raise ValueError(f"shape is one of {', '.join(SHAPES)}")
        self._enqueue(n, _Action("bad_body", bad_kind=shape))

    def _bad_body(self, request: RecordedRequest, good: Response, kind: str) -> Response:
        if kind not in SHAPES:
            return super()._bad_body(request, good, kind)
        if kind == "html":
            return Response(200, HTML_PAGE, content_type="text/html; charset=utf-8")
        body = good.body
        if isinstance(body, bytes):
            try:
                body = json.loads(body)
            except ValueError:
                body = None
        if kind == "short":
            return Response(200, self.wrong_shape(request, body))
        if kind == "missing":
            return Response(200, self.without_vectors(request, body))
        return Response(200, self.mixed_dimensions(request, body))

    # ------------------------------------------------------------------ hooks
    def without_vectors(self, request: RecordedRequest, good: Any) -> Any:
        """The good answer without its vector array."""
        return {"unexpected": True}

    def mixed_dimensions(self, request: RecordedRequest, good: Any) -> Any:
        """The good answer with its last vector one value shorter."""
        return good
