"""Providers without the engine: request shapes, URL resolution, response parsing, error bodies,
plus the engine's pure helpers (batching, Retry-After, scrubbing, ModelConfig)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from proxy.engine.batching import dedupe, reassemble, split
from proxy.engine.errors import (
    BadModelResponse,
    ModelConfigError,
    ProviderError,
    scrub,
    secret_values,
)
from proxy.engine.models import COLUMNS, ModelConfig
from proxy.engine.retry import RetryPolicy, is_retryable_status, parse_retry_after
from proxy.engine.settings import EngineSettings
from proxy.providers import PROVIDERS, native_embedding, provider_for
from proxy.providers.base import find_error_message, json_content, rebase

SETTINGS = EngineSettings(google_project="my-proj", google_region="europe-west4")

VERTEX = ModelConfig(
    model_id="emb",
    model_request_url="publishers/google/models/text-embedding-005",
    model_provider="google",
    model_type="text_embedding",
    model_qualified_name="text-embedding-005",
    model_auth_type="alloydb_service_agent_iam",
)
OPENAI = ModelConfig(
    model_id="oa",
    model_request_url="https://api.openai.com/v1/embeddings",
    model_provider="open_ai",
    model_type="text_embedding",
    model_qualified_name="text-embedding-3-small",
)
CLAUDE = ModelConfig(
    model_id="claude",
    model_request_url="https://api.anthropic.com/v1/messages",
    model_provider="anthropic",
    model_qualified_name="claude-3-haiku-20240307",
)
HF = ModelConfig(
    model_id="hf",
    model_request_url="https://api-inference.huggingface.co/models/BAAI/bge-small-en-v1.5",
    model_provider="hugging_face",
    model_type="text_embedding",
)
CUSTOM = ModelConfig(model_id="c", model_request_url="https://models.example/v1/score?x=1")


def response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers)


# -- request shapes ---------------------------------------------------------------------------


def test_vertex_embedding_request_resolves_relative_url_and_wraps_instances():
    vertex = provider_for("google")
    request = vertex.embedding_request(
        VERTEX, ["a", "b"], SETTINGS, {"Authorization": "Bearer tok"}
    )
    assert request.method == "POST"
    assert str(request.url) == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-proj/locations/europe-west4/"
        "publishers/google/models/text-embedding-005:predict"
    )
    assert request.headers["authorization"] == "Bearer tok"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"instances": [{"content": "a"}, {"content": "b"}]}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "locations/us-east1/publishers/google/models/gemini-1.5-pro:generateContent",
            "https://us-east1-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-east1/"
            "publishers/google/models/gemini-1.5-pro:generateContent",
        ),
        (
            "projects/other/locations/asia-east1/publishers/google/models/m:streamGenerateContent",
            "https://asia-east1-aiplatform.googleapis.com/v1/projects/other/locations/asia-east1/"
            "publishers/google/models/m:streamGenerateContent",
        ),
        (
            "v1beta1/projects/p/locations/global/publishers/google/models/m:generateContent",
            "https://aiplatform.googleapis.com/v1beta1/projects/p/locations/global/publishers/google/models/m:generateContent",
        ),
        (
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/endpoints/9:predict",
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/endpoints/9:predict",
        ),
    ],
)
def test_vertex_request_urls(url: str, expected: str):
    model = ModelConfig(model_id="g", model_request_url=url, model_provider="google")
    assert provider_for("google").request_url(model, SETTINGS) == expected


def test_vertex_base_url_template_applies_to_relative_and_absolute_urls():
    settings = EngineSettings(vertex_base_url="http://127.0.0.1:9000/{region}/", google_project="p")
    vertex = provider_for("google")
    relative = ModelConfig(
        model_id="g", model_request_url="publishers/google/models/m", model_provider="google"
    )
    assert vertex.request_url(relative, settings) == (
        "http://127.0.0.1:9000/us-central1/v1/projects/p/locations/us-central1/publishers/google/models/m"
    )
    absolute = ModelConfig(
        model_id="g",
        model_request_url="https://europe-west1-aiplatform.googleapis.com/v1/projects/p/x:predict",
        model_provider="google",
    )
    assert (
        vertex.request_url(absolute, settings)
        == "http://127.0.0.1:9000/europe-west1/v1/projects/p/x:predict"
    )


def test_vertex_relative_url_without_project_is_a_config_error():
    with pytest.raises(ModelConfigError, match="no Google project"):
        provider_for("google").request_url(VERTEX, EngineSettings())
    with pytest.raises(ModelConfigError, match="cannot resolve"):
        bad = ModelConfig(model_id="g", model_request_url="models/x", model_provider="google")
        provider_for("google").request_url(bad, SETTINGS)


def test_vertex_generic_body_passes_through_unchanged():
    model = ModelConfig(
        model_id="gemini",
        model_request_url="publishers/google/models/gemini-1.5-pro:generateContent",
        model_provider="google",
    )
    raw = '{"contents": [{"role": "user", "parts": [{"text": "hi"}]}],   "x": 1.50}'
    request = provider_for("google").predict_request(model, raw, SETTINGS, {})
    assert request.content == raw.encode()
    assert str(request.url).endswith("/publishers/google/models/gemini-1.5-pro:generateContent")


def test_vertex_batch_limits():
    vertex = provider_for("google")
    assert vertex.batch_limit(VERTEX) == 250
    gemini = ModelConfig(
        model_id="ge",
        model_request_url="publishers/google/models/gemini-embedding-001",
        model_provider="google",
        model_qualified_name="gemini-embedding-001",
    )
    assert vertex.batch_limit(gemini) == 1


def test_openai_embedding_request_uses_configured_base_url():
    openai = provider_for("open_ai")
    settings = EngineSettings(openai_base_url="http://127.0.0.1:8000/")
    request = openai.embedding_request(OPENAI, ["x", "y"], settings, {"Authorization": "Bearer sk"})
    assert str(request.url) == "http://127.0.0.1:8000/v1/embeddings"
    assert json.loads(request.content) == {
        "model": "text-embedding-3-small", "input": ["x", "y"], "encoding_format": "base64"
    }
    assert request.headers["authorization"] == "Bearer sk"
    assert openai.batch_limit(OPENAI) == 2048
    assert openai.auth_headers("sk-1") == {"Authorization": "Bearer sk-1"}


def test_anthropic_headers_and_body():
    anthropic = provider_for("anthropic")
    settings = EngineSettings(anthropic_base_url="http://fake:1")
    headers = anthropic.auth_headers("key-123")
    assert headers == {"x-api-key": "key-123"}
    body = {"model": "claude-3-haiku-20240307", "max_tokens": 10, "messages": []}
    request = anthropic.predict_request(CLAUDE, body, settings, headers)
    assert str(request.url) == "http://fake:1/v1/messages"
    assert request.headers["x-api-key"] == "key-123"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == body
    override = anthropic.predict_request(
        CLAUDE, body, settings, {"Anthropic-Version": "2099-01-01"}
    )
    assert override.headers.get_list("anthropic-version") == ["2099-01-01"]
    assert not anthropic.supports_embeddings


def test_hugging_face_requests_and_embeddings():
    hf = provider_for("hugging_face")
    assert str(hf.predict_request(HF, {"inputs": "x"}, SETTINGS, {}).url) == HF.model_request_url
    settings = EngineSettings(huggingface_base_url="http://127.0.0.1:7000")
    request = hf.embedding_request(HF, ["a", "b"], settings, {"Authorization": "Bearer hf_x"})
    assert str(request.url) == "http://127.0.0.1:7000/models/BAAI/bge-small-en-v1.5"
    assert json.loads(request.content) == {"inputs": ["a", "b"]}
    assert hf.parse_embeddings(HF, response([[1, 2], [3, 4]]), 2) == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(BadModelResponse, match="token embeddings"):
        hf.parse_embeddings(HF, response([[[1.0], [2.0]]]), 1)


def test_custom_body_and_url_pass_through():
    custom = provider_for("custom")
    request = custom.predict_request(
        CUSTOM, b'{"a":[1,2]}', SETTINGS, {"Authorization": "Bearer s"}
    )
    assert str(request.url) == "https://models.example/v1/score?x=1"
    assert request.content == b'{"a":[1,2]}'
    assert custom.predict_request(CUSTOM, {"a": "é"}, SETTINGS, {}).content == '{"a":"é"}'.encode()


# -- responses ----------------------------------------------------------------------------------


def test_vertex_parses_predictions_in_order():
    vertex = provider_for("google")
    body = {
        "predictions": [
            {"embeddings": {"values": [0.1, 0.2], "statistics": {}}},
            {"embeddings": {"values": [1, 2]}},
        ]
    }
    assert vertex.parse_embeddings(VERTEX, response(body), 2) == [[0.1, 0.2], [1.0, 2.0]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"nope": []}, "no predictions"),
        ({"predictions": [{"embeddings": {"values": [1.0]}}]}, "1 predictions for 2"),
        (
            {"predictions": [{"embeddings": {"values": [1.0]}}, {"embeddings": {}}]},
            r"predictions\[1\]",
        ),
        (
            {"predictions": [{"embeddings": {"values": [1.0]}}, {"embeddings": {"values": ["x"]}}]},
            "not a number",
        ),
        (
            {
                "predictions": [
                    {"embeddings": {"values": [1.0]}},
                    {"embeddings": {"values": [True]}},
                ]
            },
            "not a number",
        ),
        (
            {"predictions": [{"embeddings": {"values": [1.0]}}, {"embeddings": {"values": []}}]},
            "non-empty",
        ),
    ],
)
def test_vertex_bad_shapes(body: object, message: str):
    with pytest.raises(BadModelResponse, match=message) as caught:
        provider_for("google").parse_embeddings(VERTEX, response(body), 2)
    assert str(caught.value).startswith('model "emb": unexpected response from Vertex AI')


def test_non_finite_and_non_json_are_bad_responses():
    vertex = provider_for("google")
    nan = b'{"predictions": [{"embeddings": {"values": [NaN, 1.0]}}]}'
    with pytest.raises(BadModelResponse, match="finite"):
        vertex.parse_embeddings(VERTEX, response(nan), 1)
    with pytest.raises(BadModelResponse, match="not JSON"):
        vertex.parse_embeddings(VERTEX, response(b"<html>oops</html>"), 1)


def test_openai_orders_by_index():
    data = [{"object": "embedding", "index": i, "embedding": [float(i)]} for i in (2, 0, 1)]
    vectors = provider_for("open_ai").parse_embeddings(OPENAI, response({"data": data}), 3)
    assert vectors == [[0.0], [1.0], [2.0]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}], "twice"),
        (
            [{"index": 0, "embedding": [1.0]}, {"index": 5, "embedding": [2.0]}],
            "not an input position",
        ),
        ([{"index": 0, "embedding": [1.0]}, {"embedding": [2.0]}], "not an input position"),
        ([{"index": 0, "embedding": [1.0]}], "1 embeddings for 2"),
        ([{"index": 0, "embedding": "AAAA"}, {"index": 1, "embedding": [1.0]}], "not base64 float32 data"),
    ],
)
def test_openai_bad_shapes(data: object, message: str):
    with pytest.raises(BadModelResponse, match=message):
        provider_for("open_ai").parse_embeddings(OPENAI, response({"data": data}), 2)


def test_vertex_stream_answer_is_returned_as_array():
    vertex = provider_for("google")
    chunks = [{"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]}, {"candidates": []}]
    assert vertex.parse_prediction(VERTEX, response(chunks)) == chunks
    sse = "".join(f"data: {json.dumps(c)}\r\n\r\n" for c in chunks).encode()
    assert (
        vertex.parse_prediction(
            VERTEX, response(sse, headers={"content-type": "text/event-stream"})
        )
        == chunks
    )


# -- errors and retries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
            "Incorrect API key provided",
        ),
        (
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "Overloaded",
        ),
        (
            [{"error": {"code": 400, "message": "Bad region", "status": "INVALID_ARGUMENT"}}],
            "Bad region",
        ),
        ({"error": "Model is loading", "estimated_time": 3}, "Model is loading"),
        ({"error": ["a", "b"]}, "a; b"),
        (
            {"detail": [{"loc": ["body"], "msg": "field required"}]},
            '[{"loc": ["body"], "msg": "field required"}]',
        ),
        ({"message": "plain"}, "plain"),
    ],
)
def test_error_message_extraction(body: object, expected: str):
    assert find_error_message(body) == expected
    assert provider_for("custom").error_message(response(body, 400)) == expected


def test_error_message_falls_back_to_text_and_is_truncated():
    custom = provider_for("custom")
    assert custom.error_message(httpx.Response(502, content=b"Bad  gateway\n")) == "Bad gateway"
    assert custom.error_message(httpx.Response(503)) == "Service Unavailable"
    long = custom.error_message(response({"error": {"message": "x" * 5000}}, 400))
    assert len(long) == 1000 and long.endswith("...")


def test_openai_insufficient_quota_is_final():
    openai = provider_for("open_ai")
    quota = response(
        {
            "error": {
                "message": "You exceeded your quota",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            }
        },
        429,
    )
    assert not openai.retryable(quota)
    assert openai.retryable(
        response({"error": {"message": "Rate limit", "code": "rate_limit_exceeded"}}, 429)
    )


def test_hugging_face_estimated_time_is_a_retry_after():
    hf = provider_for("hugging_face")
    loading = response({"error": "Model is loading", "estimated_time": 12.5}, 503)
    assert hf.retry_after(loading, now=0) == 12.5
    assert hf.retry_after(response({"error": "x"}, 503, {"Retry-After": "3"}), now=0) == 3.0


def test_retryable_statuses():
    assert [
        s
        for s in (400, 401, 403, 404, 408, 429, 500, 501, 502, 503, 504, 505, 529)
        if is_retryable_status(s)
    ] == [
        408,
        429,
        500,
        502,
        503,
        504,
        529,
    ]


def test_retry_after_seconds_and_http_date():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    later = format_datetime(datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now) == 30.0
    earlier = format_datetime(datetime(2024, 1, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0
    for junk in (None, "", "soon", "-1", "inf"):
        assert parse_retry_after(junk, now) is None


def test_backoff_grows_with_jitter_and_honours_retry_after():
    policy = RetryPolicy(max_attempts=5, backoff_base=1.0, backoff_max=5.0, max_retry_after=60)
    assert [policy.delay(n, None, lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 2.5]
    assert [policy.delay(n, None, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert policy.delay(1, 10.0, lambda: 0.0) == 10.0
    assert math.isclose(policy.delay(1, 10.0, lambda: 1.0) or 0, 11.0)
    assert policy.delay(1, 61.0, lambda: 0.0) is None


# -- engine helpers -------------------------------------------------------------------------------


def test_dedupe_split_reassemble():
    texts = ["a", "b", "a", "c", "b", "a"]
    unique, positions = dedupe(texts)
    assert unique == ["a", "b", "c"] and positions == [0, 1, 0, 2, 1, 0]
    assert split(["1", "2", "3", "4", "5"], 2) == [["1", "2"], ["3", "4"], ["5"]]
    assert split(["aaaa", "bb", "cc", "dddddd", "e"], 10, max_chars=5) == [
        ["aaaa"],
        ["bb", "cc"],
        ["dddddd"],
        ["e"],
    ]
    assert split([], 3) == []
    out = reassemble([[1.0], [2.0], [3.0]], positions)
    assert out == [[1.0], [2.0], [1.0], [3.0], [2.0], [1.0]]
    out[0].append(9.0)
    assert out[2] == [1.0]  # copies, not shared lists


def test_scrub_and_secret_values():
    secrets = secret_values({"Authorization": "Bearer sk-abcdef", "x-api-key": "xyz"})
    assert secrets == {"Bearer sk-abcdef", "sk-abcdef", "xyz"}
    assert (
        scrub("bad key sk-abcdef and Bearer sk-abcdef; xyz", secrets) == "bad key *** and ***; xyz"
    )
    error = ProviderError(
        401, "Incorrect API key provided: sk-abcdef", provider="OpenAI", model_id="m"
    )
    error.redact(secrets)
    assert (
        "sk-abcdef" not in str(error)
        and error.provider_message == "Incorrect API key provided: ***"
    )


def test_model_config_from_row_mirrors_the_table():
    row = {c: None for c in COLUMNS} | {
        "model_id": "m",
        "model_request_url": "https://x",
        "model_provider": "open_ai",
        "model_type": "text_embedding",
        "model_availability": "AVAILABLE",
        "extra": 1,
    }
    model = ModelConfig.from_row(row)
    assert model.model_provider == "open_ai" and model.model_auth_type is None
    assert len(COLUMNS) == 13
    with pytest.raises(AttributeError):
        model.model_id = "other"  # type: ignore[misc]


def test_registry_and_native_embedding():
    assert set(PROVIDERS) == {"google", "open_ai", "hugging_face", "anthropic", "custom"}
    with pytest.raises(ModelConfigError, match="azure_openai"):
        provider_for("azure_openai")
    assert native_embedding(VERTEX) and native_embedding(OPENAI) and native_embedding(HF)
    builtin = ModelConfig(
        model_id="b",
        model_request_url=OPENAI.model_request_url,
        model_provider="open_ai",
        model_qualified_name="text-embedding-3-small",
        input_transform_fn="google_ml.openai_text_embedding_input_transform",
        output_transform_fn="google_ml.openai_text_embedding_output_transform",
    )
    assert native_embedding(builtin)
    user = ModelConfig(
        model_id="u",
        model_request_url="https://x",
        model_provider="open_ai",
        input_transform_fn="my_fn",
    )
    assert not native_embedding(user)
    assert not native_embedding(CUSTOM) and not native_embedding(CLAUDE)


def test_json_content_and_rebase():
    assert json_content("[1, 2]") == b"[1, 2]"
    assert json_content({"k": [1, None]}) == b'{"k":[1,null]}'
    assert (
        rebase("https://api.openai.com/v1/embeddings", ["https://api.openai.com"], "http://h:1")
        == "http://h:1/v1/embeddings"
    )
    assert (
        rebase("https://api.openai.com.evil/v1", ["https://api.openai.com"], "http://h:1")
        == "https://api.openai.com.evil/v1"
    )
    assert (
        rebase("https://other/v1", ["https://api.openai.com"], "http://h:1") == "https://other/v1"
    )


def test_openai_base64_embeddings_are_decoded():
    import base64 as b64
    import struct

    from proxy.providers.openai import _decode_base64_floats

    encoded = b64.b64encode(struct.pack("<3f", 0.5, -0.25, 1.0)).decode()
    assert _decode_base64_floats(encoded) == [0.5, -0.25, 1.0]
    assert _decode_base64_floats("not base64!") is None
    assert _decode_base64_floats(b64.b64encode(b"abc").decode()) is None  # not whole float32s
