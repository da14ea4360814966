"""Hugging Face inference (google_ml.model_provider 'hugging_face').

POST the model URL with a Bearer token; `predict_row` bodies go unchanged. Embeddings without
transform functions use the feature-extraction convention: `{"inputs": [...]}` in, one vector
per input out (a sentence-embedding model; token-level output is refused). A model still
loading answers 503 with `estimated_time`, which is honoured like Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import httpx

from proxy.engine.models import ModelConfig
from proxy.engine.settings import EngineSettings

from .base import Provider, Vector, rebase

PUBLIC_ORIGINS = ("https://api-inference.huggingface.co", "https://router.huggingface.co")
MAX_INPUTS = 32


class HuggingFace(Provider):
    name = "hugging_face"
    label = "Hugging Face"
    supports_embeddings = True

    def request_url(self, model: ModelConfig, settings: EngineSettings) -> str:
        return rebase(
            model.model_request_url.strip(), PUBLIC_ORIGINS, settings.huggingface_base_url
        )

    def batch_limit(self, model: ModelConfig) -> int:
        return MAX_INPUTS

    def embedding_request(
        self,
        model: ModelConfig,
        texts: Sequence[str],
        settings: EngineSettings,
        headers: Mapping[str, str],
    ) -> httpx.Request:
        body = json.dumps({"inputs": list(texts)}, ensure_ascii=False).encode()
        return self.post(model, self.request_url(model, settings), body, headers)

    def parse_embeddings(
        self, model: ModelConfig, response: httpx.Response, count: int
    ) -> list[Vector]:
        data = self.response_json(model, response)
        if not isinstance(data, list):
            raise self.bad(model, "not an array of embeddings")
        if len(data) != count:
            raise self.bad(model, f"{len(data)} embeddings for {count} inputs")
        if count and isinstance(data[0], list) and data[0] and isinstance(data[0][0], list):
            raise self.bad(
                model, "token embeddings, not one vector per input (use a sentence-embedding model)"
            )
        return [self.vector(model, item, f"[{i}]") for i, item in enumerate(data)]

    def retry_after(self, response: httpx.Response, now: float) -> float | None:
        seconds = super().retry_after(response, now)
        if seconds is None and response.status_code == 503:
            try:
                estimated = response.json().get("estimated_time")
            except (ValueError, AttributeError):
                return None
            if (
                isinstance(estimated, int | float)
                and not isinstance(estimated, bool)
                and estimated >= 0
            ):
                return float(estimated)
        return seconds
