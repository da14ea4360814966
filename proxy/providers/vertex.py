"""Vertex AI (google_ml.model_provider 'google'): text embeddings and Gemini-style generic models.

Registered URLs are usually relative, as AlloyDB stores them:
`publishers/google/models/NAME[:verb]`, `locations/REGION/publishers/...` or
`projects/P/locations/REGION/...`. They resolve to
`{vertex_base_url with region}/v1/projects/{project}/locations/{region}/...`, taking the project
and region from the settings where the URL has none. Absolute URLs on
`https://REGION-aiplatform.googleapis.com` are moved to the configured base URL.

Embeddings: POST `...:predict` with `{"instances": [{"content": text}, ...]}` (at most 250; one
for gemini-embedding-*), answer `predictions[i].embeddings.values`. Generic models
(`:generateContent`, `:streamGenerateContent`) get the body unchanged; the streaming method
answers a JSON array, returned as is (an SSE answer is turned into the same array).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from proxy.engine.errors import ModelConfigError
from proxy.engine.models import ModelConfig
from proxy.engine.settings import DEFAULT_VERTEX_BASE_URL, EngineSettings

from .base import Provider, Vector, json_content

_REGIONAL_HOST = re.compile(
    r"^https://([a-z][a-z0-9-]*)-aiplatform\.googleapis\.com(?=[/?#]|$)", re.I
)
_GLOBAL_HOST = re.compile(r"^https://aiplatform\.googleapis\.com(?=[/?#]|$)", re.I)
_PROJECT_PATH = re.compile(r"^projects/[^/]+/locations/([^/]+)/")
_LOCATION_PATH = re.compile(r"^locations/([^/]+)/")
_VERSION = re.compile(r"^(v1|v1beta1)/")

MAX_INSTANCES = 250
# Vertex AI refuses requests over 20,000 tokens; about 4 characters a token in English text.
MAX_BATCH_CHARS = 60_000


class VertexAI(Provider):
    name = "google"
    label = "Vertex AI"
    supports_embeddings = True
    builtin_transforms = frozenset(
        {
            "google_ml.vertexai_text_embedding_input_transform",
            "google_ml.vertexai_text_embedding_output_transform",
        }
    )

    def request_url(self, model: ModelConfig, settings: EngineSettings) -> str:
        url = model.model_request_url.strip()
        if url.lower().startswith(("http://", "https://")):
            return self._rebase_absolute(url, settings)
        path = url.lstrip("/")
        version = "v1"
        if match := _VERSION.match(path):
            version, path = match.group(1), path[match.end() :]
        if match := _PROJECT_PATH.match(path):
            region = match.group(1)
        elif match := _LOCATION_PATH.match(path):
            region = match.group(1)
            path = f"projects/{self._project(model, settings)}/{path}"
        elif path.startswith("publishers/"):
            region = settings.google_region
            path = f"projects/{self._project(model, settings)}/locations/{region}/{path}"
        else:
            raise ModelConfigError(
                f"cannot resolve the Vertex AI request URL {url!r}: expected an http(s) URL or "
                "a path starting with publishers/, locations/ or projects/",
                model_id=model.model_id,
            )
        return f"{_base_url(settings.vertex_base_url, region)}/{version}/{path}"

    def batch_limit(self, model: ModelConfig) -> int:
        # gemini-embedding-001 takes one instance per :predict request
        return 1 if self.model_name(model).startswith("gemini-embedding") else MAX_INSTANCES

    def batch_char_budget(self, model: ModelConfig) -> int | None:
        return MAX_BATCH_CHARS

    def embedding_request(
        self,
        model: ModelConfig,
        texts: Sequence[str],
        settings: EngineSettings,
        headers: Mapping[str, str],
    ) -> httpx.Request:
        url = _with_verb(self.request_url(model, settings))
        body = {"instances": [{"content": text} for text in texts]}
        return self.post(model, url, json.dumps(body, ensure_ascii=False).encode(), headers)

    def predict_request(
        self,
        model: ModelConfig,
        body: Any,
        settings: EngineSettings,
        headers: Mapping[str, str],
    ) -> httpx.Request:
        # An embedding model's URL names no method: its bodies (from a user input transform,
        # or predict_row's) go to :predict, as the native batches do.
        url = self.request_url(model, settings)
        if model.model_type in ("text_embedding", "multimodal_embedding"):
            url = _with_verb(url)
        return self.post(model, url, json_content(body), headers)

    def parse_embeddings(
        self, model: ModelConfig, response: httpx.Response, count: int
    ) -> list[Vector]:
        data = self.response_json(model, response)
        predictions = data.get("predictions") if isinstance(data, dict) else None
        if not isinstance(predictions, list):
            raise self.bad(model, "no predictions array")
        if len(predictions) != count:
            raise self.bad(model, f"{len(predictions)} predictions for {count} instances")
        vectors: list[Vector] = []
        for i, prediction in enumerate(predictions):
            embeddings = prediction.get("embeddings") if isinstance(prediction, dict) else None
            values = embeddings.get("values") if isinstance(embeddings, dict) else None
            vectors.append(self.vector(model, values, f"predictions[{i}].embeddings.values"))
        return vectors

    def parse_prediction(self, model: ModelConfig, response: httpx.Response) -> Any:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return self._sse_array(model, response.text)
        return self.response_json(model, response)

    def prediction_text(self, model: ModelConfig, response: httpx.Response) -> str:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return json.dumps(self._sse_array(model, response.text))  # the events as one array
        return super().prediction_text(model, response)

    def _sse_array(self, model: ModelConfig, text: str) -> list[Any]:
        events: list[Any] = []
        for line in text.splitlines():
            if line.startswith("data:"):
                try:
                    events.append(json.loads(line[5:]))
                except ValueError:
                    raise self.bad(model, f"event not JSON: {line[:200]!r}") from None
        return events

    def _project(self, model: ModelConfig, settings: EngineSettings) -> str:
        if not settings.google_project:
            raise ModelConfigError(
                "the Vertex AI request URL is relative and no Google project is configured",
                model_id=model.model_id,
            )
        return settings.google_project

    def _rebase_absolute(self, url: str, settings: EngineSettings) -> str:
        if settings.vertex_base_url == DEFAULT_VERTEX_BASE_URL:
            return url
        if match := _REGIONAL_HOST.match(url):
            return _base_url(settings.vertex_base_url, match.group(1).lower()) + url[match.end() :]
        if match := _GLOBAL_HOST.match(url):
            return _base_url(settings.vertex_base_url, "global") + url[match.end() :]
        return url


def _with_verb(url: str) -> str:
    """`url` with `:predict` when its last segment names no method."""
    return url if ":" in url.rsplit("/", 1)[-1] else url + ":predict"


def _base_url(template: str, region: str) -> str:
    if region == "global" and template == DEFAULT_VERTEX_BASE_URL:
        return "https://aiplatform.googleapis.com"
    return template.replace("{region}", region)
