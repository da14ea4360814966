"""OpenAI (google_ml.model_provider 'open_ai').

Embeddings: POST the model URL (https://api.openai.com/v1/embeddings) with
`{"model": qualified_name, "input": [...]}`, at most 2048 inputs; answer `data[i].embedding`,
put in order by `data[i].index` (the API does not promise the order). Generic models get the
body unchanged. A 429 for an exhausted quota is final, not worth a retry.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from array import array
from collections.abc import Mapping, Sequence

import httpx

from proxy.engine.errors import ModelConfigError
from proxy.engine.models import ModelConfig
from proxy.engine.settings import EngineSettings

from .base import Provider, Vector, rebase

PUBLIC_ORIGIN = "https://api.openai.com"
MAX_INPUTS = 2048
# OpenAI refuses requests over 300,000 tokens; about 4 characters a token in English text.
MAX_BATCH_CHARS = 1_000_000


class OpenAI(Provider):
    name = "open_ai"
    label = "OpenAI"
    supports_embeddings = True
    builtin_transforms = frozenset(
        {
            "google_ml.openai_text_embedding_input_transform",
            "google_ml.openai_text_embedding_output_transform",
        }
    )

    def request_url(self, model: ModelConfig, settings: EngineSettings) -> str:
        return rebase(model.model_request_url.strip(), [PUBLIC_ORIGIN], settings.openai_base_url)

    def batch_limit(self, model: ModelConfig) -> int:
        return MAX_INPUTS

    def batch_char_budget(self, model: ModelConfig) -> int | None:
        return MAX_BATCH_CHARS

    def embedding_request(
        self,
        model: ModelConfig,
        texts: Sequence[str],
        settings: EngineSettings,
        headers: Mapping[str, str],
    ) -> httpx.Request:
        if not model.model_qualified_name:
            raise ModelConfigError(
                "an OpenAI embedding model needs model_qualified_name", model_id=model.model_id
            )
        # base64 float32 (as the official SDK asks): ~4x smaller than JSON floats, and decoded
        # at C speed; 2048 embeddings of 1536 floats are ~30 MB as JSON text.
        body = {"model": model.model_qualified_name, "input": list(texts), "encoding_format": "base64"}
        url = self.request_url(model, settings)
        return self.post(model, url, json.dumps(body, ensure_ascii=False).encode(), headers)

    def parse_embeddings(
        self, model: ModelConfig, response: httpx.Response, count: int
    ) -> list[Vector]:
        payload = self.response_json(model, response)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise self.bad(model, "no data array")
        if len(data) != count:
            raise self.bad(model, f"{len(data)} embeddings for {count} inputs")
        vectors: list[Vector | None] = [None] * count
        for i, item in enumerate(data):
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                raise self.bad(
                    model, f"data[{i}].index is {json.dumps(index)}, not an input position"
                )
            if vectors[index] is not None:
                raise self.bad(model, f"data[{i}].index {index} appears twice")
            assert isinstance(item, dict)
            embedding = item.get("embedding")
            if isinstance(embedding, str):  # encoding_format=base64: little-endian float32
                embedding = _decode_base64_floats(embedding)
                if embedding is None:
                    raise self.bad(model, f"data[{i}].embedding is not base64 float32 data")
            vectors[index] = self.vector(model, embedding, f"data[{i}].embedding")
        return [v for v in vectors if v is not None]

    def retryable(self, response: httpx.Response) -> bool:
        if response.status_code == 429:
            try:
                error = response.json().get("error") or {}
            except (ValueError, AttributeError):
                error = {}
            if isinstance(error, dict) and "insufficient_quota" in (
                error.get("code"),
                error.get("type"),
            ):
                return False
        return super().retryable(response)


def _decode_base64_floats(text: str) -> list[float] | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw or len(raw) % 4:
        return None
    floats = array("f")
    floats.frombytes(raw)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()
