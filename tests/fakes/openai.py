"""Fake OpenAI API: ``POST /v1/embeddings`` and a minimal ``POST /v1/chat/completions``.

Checked against (search tool, corpora docs/issues):
- OpenAI API reference, embeddings (developers.openai.com/api/reference/.../embeddings):
  ``CreateEmbeddingResponse {object: "list", data: [{object: "embedding", index, embedding}],
  model, usage: {prompt_tokens, total_tokens}}``; models text-embedding-ada-002 / -3-small
  (1536) / -3-large (3072); ``dimensions`` (text-embedding-3 only), ``encoding_format``
  float|base64; "any array must be 2048 dimensions or less" (quoted in
  embeddings-benchmark/mteb#1200, limit confirmed in openai/openai-python#118).
- Over-limit / invalid input: 400 ``'$.input' is invalid. Please check the API reference:
  https://platform.openai.com/docs/api-reference.`` (mteb#1200, topoteretes/cognee#4954).
- Error body ``{"error": {"message", "type", "param", "code"}}``; missing key: "You didn't
  provide an API key. ..." type invalid_request_error, code null (openai/openai-python#1434);
  wrong key: "Incorrect API key provided: ..." code invalid_api_key; 429 code
  rate_limit_exceeded with retry-after headers (wrtnlabs/autobe#136); 500 "The server had an
  error while processing your request. Sorry about that!" (openai/openai-python#213).
- Chat completion object (OpenAI reference via typed clients): ``{id, object:
  "chat.completion", created, model, choices: [{index, message: {role, content, refusal},
  logprobs, finish_reason}], usage: {prompt_tokens, completion_tokens, total_tokens}}``.

The order of ``data`` is not promised by the API: with ``shuffle=True`` the fake returns it
permuted so clients must place vectors by ``index``.
"""

from __future__ import annotations

import base64
import random
import struct
import time
import uuid
from typing import Any

from .base import RecordedRequest, Responder, Response, bearer_token, echo
from .embeddings import count_tokens, embed
from .shapes import BadShapes

EMBEDDING_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
SHORTENABLE = {"text-embedding-3-small", "text-embedding-3-large"}
MAX_INPUTS = 2048
INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."

_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request.", "invalid_request_error", None),
    404: ("Not found.", "invalid_request_error", None),
    429: (
        "Rate limit reached for text-embedding-3-small in organization org-fake on requests per "
        "min (RPM): Limit 3000, Used 3000, Requested 1. Please try again in 20ms. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def openai_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> Response:
    return Response(
        status,
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        headers={"x-request-id": f"req_{uuid.uuid4().hex}"},
    )


class FakeOpenAI(BadShapes):
    """Serves ``{base_url}/v1/embeddings`` and ``{base_url}/v1/chat/completions``."""

    real_max_batch = MAX_INPUTS

    def __init__(
        self,
        api_key: str | None = "sk-test-openai",
        *,
        shuffle: bool = False,
        responder: Responder = echo,
        **kwargs: Any,
    ):
        self.shuffle = shuffle
        self.responder = responder
        super().__init__(api_key, **kwargs)

    @staticmethod
    def expected_embedding(
        text: str, model: str = "text-embedding-3-small", dimensions: int | None = None
    ) -> list[float]:
        """The vector this fake returns (OpenAI shortens and renormalises for ``dimensions``)."""
        return embed(text, dimensions or EMBEDDING_DIMS[model])

    # ------------------------------------------------------------------ hooks
    def check_auth(self, request: RecordedRequest) -> Response | None:
        if self.credential is None:
            return None
        token = bearer_token(request)
        if token is None:
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
                "field (with blank username) if you're accessing the API from your browser and are "
                "prompted for a username and password. You can obtain an API key from "
                "https://platform.openai.com/account/api-keys.",
            )
        if token != self.credential:
            shown = f"{token[:3]}{'*' * 4}{token[-4:]}" if len(token) > 8 else "*" * len(token)
            return openai_error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    def error(self, status: int, message: str | None = None) -> Response:
        default_message, type_, code = _ERRORS.get(
            status, ("Unexpected error.", "server_error", None)
        )
        return openai_error(status, message or default_message, type_, code)

    def wrong_shape(self, request: RecordedRequest, good: Any) -> Any:
        if isinstance(good, dict) and isinstance(good.get("data"), list):
            return {**good, "data": good["data"][:-1]}  # one embedding short
        if isinstance(good, dict) and "choices" in good:
            return {**good, "choices": []}
        return {"object": "list"}

    def without_vectors(self, request: RecordedRequest, good: Any) -> Any:
        if isinstance(good, dict) and "data" in good:
            return {k: v for k, v in good.items() if k != "data"}
        return {"object": "list"}

    def mixed_dimensions(self, request: RecordedRequest, good: Any) -> Any:
        if not (isinstance(good, dict) and isinstance(good.get("data"), list) and good["data"]):
            return good
        data = [dict(item) for item in good["data"]]
        last = max(data, key=lambda item: item["index"])  # the last input, wherever it is
        vector = last["embedding"]
        if isinstance(vector, str):  # encoding_format=base64: drop the last float32
            last["embedding"] = base64.b64encode(base64.b64decode(vector)[:-4]).decode()
        else:
            last["embedding"] = vector[:-1]
        return {**good, "data": data}

    # ------------------------------------------------------------------ routing
    def route(self, request: RecordedRequest) -> Response:
        if request.method == "POST" and request.path == "/v1/embeddings":
            return self._embeddings(request.json)
        if request.method == "POST" and request.path == "/v1/chat/completions":
            return self._chat(request.json)
        return openai_error(404, f"Invalid URL ({request.method} {request.path})")

    def _model_missing(self, model: Any) -> Response:
        return openai_error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    def _embeddings(self, body: Any) -> Response:
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str):
            return openai_error(400, "you must provide a model parameter")
        raw = body.get("input")
        texts = _inputs(raw)
        if texts is None:
            return openai_error(400, INVALID_INPUT)
        limit = self.effective_batch_limit(MAX_INPUTS)
        if limit is not None and len(texts) > limit:
            return openai_error(400, INVALID_INPUT)
        if model not in EMBEDDING_DIMS:
            return self._model_missing(model)
        native = EMBEDDING_DIMS[model]
        dims = body.get("dimensions")
        if dims is not None:
            if model not in SHORTENABLE:
                return openai_error(
                    400, "This model does not support specifying dimensions.", param="dimensions"
                )
            if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= native:
                return openai_error(
                    400,
                    f"Invalid value for 'dimensions' = {dims}. Must be between 1 and {native}.",
                    param="dimensions",
                )
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return openai_error(
                400,
                f"Invalid value for 'encoding_format': {fmt!r}. Must be 'float' or 'base64'.",
                param="encoding_format",
            )
        data = []
        for i, text in enumerate(texts):
            vector = self.expected_embedding(text, model, dims)
            encoded: Any = vector
            if fmt == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        if self.shuffle and len(data) > 1:
            order = list(range(len(data)))
            random.Random(len(data) * 7919 + self.request_count).shuffle(order)
            if order == sorted(order):
                order.reverse()
            data = [data[j] for j in order]
        tokens = sum(count_tokens(t) for t in texts)
        return Response(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            headers={"x-request-id": f"req_{uuid.uuid4().hex}", "openai-model": model},
        )

    def _chat(self, body: Any) -> Response:
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str):
            return openai_error(400, "you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return openai_error(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                code="empty_array",
                param="messages",
            )
        if body.get("stream"):
            return openai_error(400, "The fake does not implement streaming.", param="stream")
        prompt_tokens = 0
        last_user = ""
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            text = (
                content
                if isinstance(content, str)
                else " ".join(
                    part.get("text", "") for part in content or [] if isinstance(part, dict)
                )
            )
            prompt_tokens += count_tokens(text)
            if isinstance(message, dict) and message.get("role") == "user":
                last_user = text
        reply = self.responder(last_user)
        completion_tokens = count_tokens(reply)
        return Response(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": None,
            },
            headers={"x-request-id": f"req_{uuid.uuid4().hex}"},
        )


def _inputs(raw: Any) -> list[str] | None:
    """The texts of ``input``: a string, strings, a token array or token arrays."""
    if isinstance(raw, str):
        return [raw] if raw else None
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(x, str) and x for x in raw):
        return list(raw)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        return [" ".join(map(str, raw))]
    if all(
        isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
        for x in raw
    ):
        return [" ".join(map(str, x)) for x in raw]
    return None
