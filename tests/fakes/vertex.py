"""Fake Vertex AI: text embeddings (``:predict``) and Gemini (``:generateContent``, stream).

Checked against (search tool, corpora docs/pages/issues/code):
- Vertex AI "Get text embeddings" (cloud.google.com/vertex-ai/generative-ai/docs/embeddings/
  get-text-embeddings): models and sizes (gemini-embedding-001 up to 3072, text-embedding-005
  and text-multilingual-embedding-002 up to 768), up to 250 input texts a request, 20,000
  input tokens a request (400 beyond), 2048 tokens per text silently truncated unless
  ``autoTruncate`` is false, ``outputDimensionality``; and "gemini-embedding-001 supports one
  instance per request" (also mem0ai/mem0#6189 citing Google's sample).
- Response shape ``predictions[i].embeddings.{values, statistics.{token_count, truncated}}``:
  LangChain.js VertexEmbeddingsResponsePrediction, the batch-prediction output example on
  cloud.google.com; ``metadata.billableCharacterCount``: public client typings (code corpus).
- Over-limit messages: "N instance(s) is allowed per prediction. Actual: M"
  (LangStream/langstream#570) and "Unable to submit request because it included too many
  instances ... supported range is from 1 (inclusive) to 251 (exclusive)" (topoteretes/cognee#4856).
- GenerateContentResponse (Vertex AI v1 reference, Ruby/.NET/Deno typings): ``candidates[].
  content.{role, parts[].text}``, ``finishReason``, ``usageMetadata.{promptTokenCount,
  candidatesTokenCount, totalTokenCount}``, ``modelVersion``, ``createTime``, ``responseId``.
- ``:streamGenerateContent`` without ``alt=sse`` answers one JSON array of such responses;
  with ``alt=sse`` it is ``data: {...}`` events (discuss.ai.google.dev "Please update REST
  documentation to include alt=sse param").
- Errors: Google's error model ``{"error": {"code", "message", "status"}}``
  (cloud.google.com/apis/design/errors); 401 texts from googleapis/java-aiplatform#1056.

Approximations: token counts are word/punctuation counts; vectors are ``embeddings.embed``;
below the native size the vector is the truncated full vector, not renormalised (Google
documents this for gemini-embedding-001; the fake does it for every model).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from .base import (
    RecordedRequest,
    Responder,
    Response,
    chunked,
    echo,
    google_auth,
    google_error,
)
from .embeddings import count_tokens, embed, truncated
from .shapes import BadShapes

_PATH = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)

EMBEDDING_DIMS = {
    "gemini-embedding-001": 3072,
    "text-embedding-005": 768,
    "text-embedding-004": 768,
    "text-multilingual-embedding-002": 768,
    "textembedding-gecko": 768,
    "textembedding-gecko-multilingual": 768,
}
#: per-model instance limits; every other embedding model: 250
MODEL_MAX_INSTANCES = {"gemini-embedding-001": 1}
MAX_INSTANCES = 250
MAX_REQUEST_TOKENS = 20_000
MAX_TEXT_TOKENS = 2048
TASK_TYPES = {
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
}

_DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: (
        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model "
        "with base model: text-embedding-005. Please submit a quota increase request. "
        "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai."
    ),
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "The request timed out. Please try again.",
}


def embedding_dim(model: str) -> int | None:
    """The native output size of a Vertex embedding model (``None``: not an embedding model)."""
    base = model.split("@", 1)[0]
    return EMBEDDING_DIMS.get(base)


def is_gemini(model: str) -> bool:
    return model.startswith("gemini-") and "embedding" not in model


class FakeVertex(BadShapes):
    """``{base_url}/v1/projects/{p}/locations/{r}/publishers/google/models/{m}:{method}``."""

    real_max_batch = MAX_INSTANCES

    def __init__(
        self,
        token: str | None = "vertex-test-token",
        *,
        project: str | None = None,
        responder: Responder = echo,
        model_max_instances: dict[str, int] | None = None,
        **kwargs: Any,
    ):
        self.project = project  # when set, other projects get 403 PERMISSION_DENIED
        self.responder = responder
        self.model_max_instances = dict(
            MODEL_MAX_INSTANCES if model_max_instances is None else model_max_instances
        )
        super().__init__(token, **kwargs)

    # ------------------------------------------------------------------ helpers for tests
    @staticmethod
    def expected_embedding(
        text: str, model: str = "text-embedding-005", dim: int | None = None
    ) -> list[float]:
        """The vector this fake returns for ``text`` (``dim``: outputDimensionality)."""
        native = embedding_dim(model)
        if native is None:
            raise ValueError(f"{model} is not a Vertex embedding model")
        if dim is None or dim == native:
            return embed(text, native)
        return truncated(text, native, dim)

    def instance_limit(self, model: str) -> int:
        real = self.model_max_instances.get(model.split("@", 1)[0], MAX_INSTANCES)
        limit = self.effective_batch_limit(real)
        return real if limit is None else limit

    # ------------------------------------------------------------------ hooks
    def check_auth(self, request: RecordedRequest) -> Response | None:
        return google_auth(request, self.credential)

    def error(self, status: int, message: str | None = None) -> Response:
        return google_error(status, message or _DEFAULT_MESSAGES.get(status, "Unknown error."))

    def wrong_shape(self, request: RecordedRequest, good: Any) -> Any:
        if isinstance(good, dict) and isinstance(good.get("predictions"), list):
            return {**good, "predictions": good["predictions"][:-1]}  # one embedding short
        if isinstance(good, list):
            return good[0] if good else {}  # an object where an array belongs
        return {"candidates": [{"content": {"role": "model"}, "finishReason": "STOP"}]}  # no parts

    def without_vectors(self, request: RecordedRequest, good: Any) -> Any:
        if isinstance(good, dict) and "predictions" in good:
            return {k: v for k, v in good.items() if k != "predictions"}
        return {"metadata": {}}

    def mixed_dimensions(self, request: RecordedRequest, good: Any) -> Any:
        if not (isinstance(good, dict) and isinstance(good.get("predictions"), list)):
            return good
        predictions = [dict(p) for p in good["predictions"]]
        if predictions:
            last = predictions[-1]
            last["embeddings"] = {
                **last["embeddings"],
                "values": last["embeddings"]["values"][:-1],
            }
        return {**good, "predictions": predictions}

    # ------------------------------------------------------------------ routing
    def route(self, request: RecordedRequest) -> Response:
        m = _PATH.match(request.path)
        if m is None or request.method != "POST":
            return self.error(
                404, f"The requested URL {request.path} was not found on this server."
            )
        project, region, model, method = m["project"], m["region"], m["model"], m["method"]
        resource = f"projects/{project}/locations/{region}/publishers/google/models/{model}"
        if self.project is not None and project != self.project:
            return self.error(
                403,
                f"Permission 'aiplatform.endpoints.predict' denied on resource "
                f"'//aiplatform.googleapis.com/{resource}' (or it may not exist).",
            )
        known = embedding_dim(model) is not None if method == "predict" else is_gemini(model)
        if method not in ("predict", "generateContent", "streamGenerateContent"):
            return self.error(
                404, f"The requested URL {request.path} was not found on this server."
            )
        if not known:
            return self.error(
                404,
                f"Publisher Model `{resource}` was not found or your project does not have access "
                f"to it. Please ensure you are using a valid model version. For more information, "
                f"see: https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions",
            )
        if not isinstance(request.json, dict):
            return self.error(400, "Invalid JSON payload received. Unexpected end of string.")
        if method == "predict":
            return self._predict(model, request.json)
        if method == "generateContent":
            return self._generate(model, request.json)
        return self._stream(model, request.json, sse=request.query.get("alt") == ["sse"])

    # ------------------------------------------------------------------ :predict
    def _predict(self, model: str, body: dict[str, Any]) -> Response:
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            return self.error(400, "Invalid argument: instances must be a non-empty list.")
        texts: list[str] = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict) or not isinstance(inst.get("content"), str):
                return self.error(400, f"Invalid instance {i}: 'content' (a string) is required.")
            task = inst.get("task_type")
            if task is not None and task not in TASK_TYPES:
                return self.error(400, f"Invalid task_type {task!r} in instance {i}.")
            texts.append(inst["content"])

        limit = self.instance_limit(model)
        if len(texts) > limit:
            if limit < MAX_INSTANCES:
                message = f"{limit} instance(s) is allowed per prediction. Actual: {len(texts)}"
            else:
                message = (
                    "Unable to submit request because it included too many instances. "
                    f"Got a batchSize value of {len(texts)} but the supported range is from 1 "
                    f"(inclusive) to {limit + 1} (exclusive)."
                )
            return self.error(400, message)

        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            return self.error(400, "Invalid argument: parameters must be an object.")
        native = embedding_dim(model) or 0
        dim = params.get("outputDimensionality", native)
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= native:
            return self.error(
                400,
                f"Unable to submit request because outputDimensionality {dim!r} is not supported "
                f"by {model}; it must be between 1 and {native}.",
            )
        auto_truncate = params.get("autoTruncate", True) is not False

        tokens = [count_tokens(t) for t in texts]
        if sum(tokens) > MAX_REQUEST_TOKENS:
            return self.error(
                400,
                f"Unable to submit request because the input token count is {sum(tokens)} but "
                f"the model supports up to {MAX_REQUEST_TOKENS}. Reduce the input token count and try again.",
            )
        predictions = []
        for text, n in zip(texts, tokens, strict=True):
            too_long = n > MAX_TEXT_TOKENS
            if too_long and not auto_truncate:
                return self.error(
                    400,
                    f"Unable to submit request because the input token count is {n} but the model "
                    f"supports up to {MAX_TEXT_TOKENS}. Reduce the input token count and try again.",
                )
            predictions.append(
                {
                    "embeddings": {
                        "statistics": {
                            "truncated": too_long,
                            "token_count": min(n, MAX_TEXT_TOKENS),
                        },
                        "values": self.expected_embedding(text, model, dim),
                    }
                }
            )
        billable = sum(len("".join(t.split())) for t in texts)
        return Response(
            200, {"predictions": predictions, "metadata": {"billableCharacterCount": billable}}
        )

    # ------------------------------------------------------------------ Gemini
    def _prompt(self, body: dict[str, Any]) -> tuple[str, int] | Response:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return self.error(
                400,
                "Unable to submit request because it has an empty contents field. Add content and try again.",
            )
        all_texts: list[str] = []
        last_user = ""
        for content in contents:
            if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
                return self.error(400, "Invalid value at 'contents': each content needs 'parts'.")
            texts = [
                p["text"]
                for p in content["parts"]
                if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
            all_texts.extend(texts)
            if content.get("role", "user") == "user":
                last_user = "\n".join(texts)
        system = body.get("systemInstruction") or body.get("system_instruction")
        if isinstance(system, dict):
            all_texts.extend(
                p.get("text", "") for p in system.get("parts", []) if isinstance(p, dict)
            )
        return last_user, sum(count_tokens(t) for t in all_texts)

    def _envelope(self, model: str, response_id: str, created: str) -> dict[str, Any]:
        return {"modelVersion": model, "createTime": created, "responseId": response_id}

    def _generate(self, model: str, body: dict[str, Any]) -> Response:
        prompt = self._prompt(body)
        if isinstance(prompt, Response):
            return prompt
        text, prompt_tokens = prompt
        reply = self.responder(text)
        out = count_tokens(reply)
        return Response(
            200,
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": reply}]},
                        "finishReason": "STOP",
                        "avgLogprobs": -0.05,
                    }
                ],
                "usageMetadata": _usage(prompt_tokens, out),
                **self._envelope(model, _response_id(), _now()),
            },
        )

    def _stream(self, model: str, body: dict[str, Any], *, sse: bool) -> Response:
        prompt = self._prompt(body)
        if isinstance(prompt, Response):
            return prompt
        text, prompt_tokens = prompt
        reply = self.responder(text)
        pieces = chunked(reply.split(" "), 3)
        response_id, created = _response_id(), _now()
        chunks: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces):
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": piece}]}}
            chunk: dict[str, Any] = {"candidates": [candidate]}
            if i == len(pieces) - 1:
                candidate["finishReason"] = "STOP"
                chunk["usageMetadata"] = _usage(prompt_tokens, count_tokens(reply))
            chunk.update(self._envelope(model, response_id, created))
            chunks.append(chunk)
        if sse:
            payload = "".join(
                f"data: {json.dumps(c, separators=(',', ':'))}\r\n\r\n" for c in chunks
            )
            return Response(200, payload.encode(), content_type="text/event-stream")
        return Response(200, chunks)


def _usage(prompt_tokens: int, candidate_tokens: int) -> dict[str, Any]:
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidate_tokens,
        "totalTokenCount": prompt_tokens + candidate_tokens,
        "trafficType": "ON_DEMAND",
    }


def _response_id() -> str:
    return uuid.uuid4().hex[:24]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
