"""Fake Hugging Face Inference API: feature-extraction and (minimal) text-generation.

Checked against (search tool, corpora docs/issues/code):
- Paths: the classic ``POST https://api-inference.huggingface.co/models/{model}`` and its
  replacement ``POST https://router.huggingface.co/hf-inference/models/{model}[/pipeline/{task}]``
  (stargate/data-api#2107, promptfoo/promptfoo#6624: "api-inference.huggingface.co is no
  longer supported. Please use https://router.huggingface.co/ instead"). Both are served.
- Feature-extraction output: ``@huggingface/tasks`` spec ``feature-extraction/output.json``
  (generated from TEI) is an array of arrays of floats: one vector per input, a string input
  giving ``[[...]]``; ``@huggingface/inference`` types it as ``(number | number[] |
  number[][])[]`` because older pipelines answered a bare ``[...]`` for a string
  (``single_as_batch=False`` reproduces that).
- Batch limit: TEI's ``max_client_batch_size`` (default 32); over it TEI answers 413 with
  ``{"error": "batch size N > maximum allowed batch size 32", "error_type": "Validation"}``
  (TEI router: ``ErrorType::Validation => StatusCode::PAYLOAD_TOO_LARGE``).
- Errors are ``{"error": "..."}``: 401 "Invalid credentials in Authorization header"
  (huggingface/transformers#38289), "Authorization header is correct, but the token seems
  invalid" (huggingface/huggingface_hub#2507); 503 ``{"error": "Model X is currently
  loading", "estimated_time": 20.0}`` (huggingface/transformers#32665).
- Text-generation: ``{"inputs": "...", "parameters": {...}}`` -> ``[{"generated_text": ...}]``,
  the prompt included unless ``parameters.return_full_text`` is false.
- Zero-shot classification (the AlloyDB guide's Hugging Face example, facebook/bart-large-mnli):
  ``{"inputs": "...", "parameters": {"candidate_labels": [...], "multi_label"?}}`` (candidate
  labels in ``parameters``, not ``inputs``: huggingface/huggingface.js#1037) ->
  ``[{"label", "score"}, ...]`` best first (``@huggingface/tasks``
  ``zero-shot-classification/spec/output.json``; a real answer of facebook/bart-large-mnli on
  hf-inference is quoted in huggingface/huggingface_hub#3557). Scores sum to 1 unless
  ``multi_label``. The 400 text for missing labels is this fake's own.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from .base import RecordedRequest, Responder, Response, bearer_token
from .embeddings import embed
from .shapes import BadShapes

_PATH = re.compile(r"^(?:/hf-inference)?/models/(?P<model>.+?)(?:/pipeline/(?P<task>[\w-]+))?$")

EMBEDDING_DIMS = {
    "sentence-transformers/all-MiniLM-L6-v2": 384,
    "sentence-transformers/all-mpnet-base-v2": 768,
    "BAAI/bge-small-en-v1.5": 384,
    "BAAI/bge-base-en-v1.5": 768,
    "BAAI/bge-large-en-v1.5": 1024,
    "intfloat/multilingual-e5-large": 1024,
}
GENERATION_MODELS = {
    "gpt2",
    "openai-community/gpt2",
    "HuggingFaceH4/zephyr-7b-beta",
    "mistralai/Mistral-7B-Instruct-v0.3",
}
CLASSIFICATION_MODELS = {"facebook/bart-large-mnli", "MoritzLaurer/ModernBERT-large-zeroshot-v2.0"}
MAX_CLIENT_BATCH = 32

_ERRORS = {
    400: "Bad Request",
    404: "Not Found",
    429: "Rate limit reached. You reached free usage limit (reset hourly). Please subscribe to a plan at https://huggingface.co/pricing to use the API at this rate",
    500: "Internal Server Error",
}


def _continuation(prompt: str) -> str:
    return " and so the story continues."


def classify(text: str, labels: list[str], multi_label: bool = False) -> list[dict[str, Any]]:
    """The fake's zero-shot answer: a deterministic score per label, best first."""
    raw = [
        int.from_bytes(hashlib.sha256(f"{text}\0{label}".encode()).digest()[:4], "big") / 2**32
        for label in labels
    ]
    if multi_label:  # each label on its own, in (0, 1)
        scores = raw
    else:  # a softmax: the scores sum to 1
        exps = [math.exp(4 * r) for r in raw]
        total = math.fsum(exps)
        scores = [e / total for e in exps]
    ranked = sorted(zip(labels, scores, strict=True), key=lambda pair: -pair[1])
    return [{"label": label, "score": score} for label, score in ranked]


class FakeHuggingFace(BadShapes):
    """Serves ``{base_url}/models/{model}`` and ``{base_url}/hf-inference/models/{model}/pipeline/{task}``."""

    real_max_batch = MAX_CLIENT_BATCH

    def __init__(
        self,
        token: str | None = "hf_test_token",
        *,
        embedding_dims: dict[str, int] | None = None,
        generation_models: set[str] | None = None,
        classification_models: set[str] | None = None,
        single_as_batch: bool = True,
        responder: Responder = _continuation,
        **kwargs: Any,
    ):
        self.embedding_dims = dict(EMBEDDING_DIMS if embedding_dims is None else embedding_dims)
        self.generation_models = set(
            GENERATION_MODELS if generation_models is None else generation_models
        )
        self.classification_models = set(
            CLASSIFICATION_MODELS if classification_models is None else classification_models
        )
        self.single_as_batch = single_as_batch
        self.responder = responder  # prompt -> generated continuation
        super().__init__(token, **kwargs)

    def expected_embedding(
        self, text: str, model: str = "sentence-transformers/all-MiniLM-L6-v2"
    ) -> list[float]:
        return embed(text, self.embedding_dims[model])

    # ------------------------------------------------------------------ hooks
    def check_auth(self, request: RecordedRequest) -> Response | None:
        if self.credential is None:
            return None
        token = bearer_token(request)
        if token is None:
            return Response(401, {"error": "Invalid credentials in Authorization header"})
        if token != self.credential:
            return Response(
                401, {"error": "Authorization header is correct, but the token seems invalid"}
            )
        return None

    def error(self, status: int, message: str | None = None) -> Response:
        if status == 503 and message is None:
            return Response(503, {"error": "Model is currently loading", "estimated_time": 20.0})
        return Response(status, {"error": message or _ERRORS.get(status, "Internal Server Error")})

    def wrong_shape(self, request: RecordedRequest, good: Any) -> Any:
        if isinstance(good, list) and good and isinstance(good[0], list):
            return good[:-1]  # one vector short
        if isinstance(good, list) and good and isinstance(good[0], dict):
            return [{"text": "no generated_text key"}]
        return {"embeddings": good}

    def without_vectors(self, request: RecordedRequest, good: Any) -> Any:
        return {"embeddings": good}  # an object where the array of vectors belongs

    def mixed_dimensions(self, request: RecordedRequest, good: Any) -> Any:
        if isinstance(good, list) and good and isinstance(good[-1], list):
            return [*good[:-1], good[-1][:-1]]
        return good

    # ------------------------------------------------------------------ routing
    def route(self, request: RecordedRequest) -> Response:
        m = _PATH.match(request.path)
        if m is None or request.method != "POST":
            return self.error(404, "Not Found")
        model, task = m["model"], m["task"]
        if model in self.embedding_dims and task in (None, "feature-extraction"):
            return self._features(model, request.json)
        if model in self.generation_models and task in (None, "text-generation"):
            return self._generate(model, request.json)
        if model in self.classification_models and task in (None, "zero-shot-classification"):
            return self._classify(request.json)
        if (
            model in self.embedding_dims
            or model in self.generation_models
            or model in self.classification_models
        ):
            return self.error(400, f"Model '{model}' doesn't support task '{task}'.")
        return self.error(404, f"Model {model} does not exist")

    def _features(self, model: str, body: Any) -> Response:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            texts, single = [inputs], True
        elif isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs):
            texts, single = list(inputs), False
        else:
            return Response(
                422,
                {
                    "error": "Input validation error: `inputs` must be a string or a list of strings",
                    "error_type": "Validation",
                },
            )
        limit = self.effective_batch_limit(MAX_CLIENT_BATCH)
        if limit is not None and len(texts) > limit:
            return Response(
                413,
                {
                    "error": f"batch size {len(texts)} > maximum allowed batch size {limit}",
                    "error_type": "Validation",
                },
            )
        if any(not t for t in texts):
            return Response(
                400,
                {
                    "error": "Input validation error: `inputs` cannot be empty",
                    "error_type": "Empty",
                },
            )
        vectors = [embed(t, self.embedding_dims[model]) for t in texts]
        if single and not self.single_as_batch:
            return Response(200, vectors[0])
        return Response(200, vectors)

    def _classify(self, body: Any) -> Response:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        params = body.get("parameters") if isinstance(body, dict) else None
        labels = params.get("candidate_labels") if isinstance(params, dict) else None
        if isinstance(labels, str):  # the pipeline also takes "a, b, c"
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        if not isinstance(inputs, str) or not inputs:
            return Response(
                422,
                {
                    "error": "Input validation error: `inputs` must be a non-empty string",
                    "error_type": "Validation",
                },
            )
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(x, str) for x in labels)
        ):
            return Response(
                400,
                {"error": "`parameters.candidate_labels` must be a non-empty list of strings"},
            )
        assert isinstance(params, dict)
        return Response(200, classify(inputs, labels, bool(params.get("multi_label", False))))

    def _generate(self, model: str, body: Any) -> Response:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, str):
            return Response(
                422,
                {
                    "error": "Input validation error: `inputs` must be a string",
                    "error_type": "Validation",
                },
            )
        params = body.get("parameters") or {}
        generated = self.responder(inputs)
        if params.get("return_full_text", True) is not False:
            generated = inputs + generated
        return Response(200, [{"generated_text": generated}])
