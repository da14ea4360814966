"""The fake providers: real HTTP over real sockets, each provider's wire format, every switch."""

from __future__ import annotations

import base64
import json
import math
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import (
    FakeAnthropic,
    FakeHuggingFace,
    FakeOpenAI,
    FakeSecretManager,
    FakeVertex,
    crc32c,
    embed,
)
from tests.fakes.embeddings import cosine

TIMEOUT = httpx.Timeout(5.0)
VERTEX = "/v1/projects/my-project/locations/us-central1/publishers/google/models"


def norm(v: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in v))


@pytest.fixture
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex(token="ya29.token") as fake:
        yield fake


@pytest.fixture
def vclient(vertex: FakeVertex) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=vertex.base_url, timeout=TIMEOUT, headers={"Authorization": "Bearer ya29.token"}
    ) as c:
        yield c


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-right-key") as fake:
        yield fake


@pytest.fixture
def oclient(openai: FakeOpenAI) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=openai.base_url, timeout=TIMEOUT, headers={"Authorization": "Bearer sk-right-key"}
    ) as c:
        yield c


def instances(*texts: str) -> dict:
    return {"instances": [{"content": t} for t in texts]}


# ---------------------------------------------------------------------- embeddings
def test_embed_is_deterministic_normalised_and_distinct():
    a, b = embed("AlloyDB is a database", 768), embed("AlloyDB is a database", 768)
    assert a == b and len(a) == 768
    assert math.isclose(norm(a), 1.0, rel_tol=1e-12)
    c = embed("something else entirely", 768)
    assert a != c and abs(cosine(a, c)) < 0.3
    short = embed("AlloyDB is a database", 8)
    assert math.isclose(norm(short), 1.0, rel_tol=1e-12)
    assert cosine(short, a[:8]) == pytest.approx(1.0)  # a prefix, renormalised
    with pytest.raises(ValueError):
        embed("x", 0)


# ---------------------------------------------------------------------- Vertex AI
def test_vertex_predict_shape_and_dimensions(vertex: FakeVertex, vclient: httpx.Client):
    r = vclient.post(
        f"{VERTEX}/text-embedding-005:predict", json=instances("hello world", "AlloyDB")
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"predictions", "metadata"}
    assert body["metadata"] == {"billableCharacterCount": len("helloworld") + len("AlloyDB")}
    assert len(body["predictions"]) == 2
    first = body["predictions"][0]["embeddings"]
    assert first["statistics"] == {"truncated": False, "token_count": 2}
    assert first["values"] == embed("hello world", 768)
    assert body["predictions"][1]["embeddings"]["values"] == embed("AlloyDB", 768)

    for model, dim in [
        ("text-embedding-004", 768),
        ("textembedding-gecko@003", 768),
        ("gemini-embedding-001", 3072),
    ]:
        r = vclient.post(f"{VERTEX}/{model}:predict", json=instances("q"))
        assert len(r.json()["predictions"][0]["embeddings"]["values"]) == dim, model

    r = vclient.post(
        f"{VERTEX}/gemini-embedding-001:predict",
        json={
            "instances": [{"content": "q", "task_type": "RETRIEVAL_QUERY"}],
            "parameters": {"outputDimensionality": 256},
        },
    )
    values = r.json()["predictions"][0]["embeddings"]["values"]
    assert (
        values
        == FakeVertex.expected_embedding("q", "gemini-embedding-001", 256)
        == embed("q", 3072)[:256]
    )
    assert norm(values) < 1.0  # truncated, not renormalised, as Google documents

    rec = vertex.requests[0]
    assert rec.method == "POST" and rec.path.endswith("text-embedding-005:predict")
    assert rec.headers["authorization"] == "Bearer ya29.token"
    assert rec.json == instances("hello world", "AlloyDB")


def test_vertex_errors(vertex: FakeVertex, vclient: httpx.Client):
    def err(r: httpx.Response, code: int, status: str) -> str:
        assert r.status_code == code
        assert set(r.json()["error"]) == {"code", "message", "status"}
        assert r.json()["error"]["code"] == code and r.json()["error"]["status"] == status
        return r.json()["error"]["message"]

    url = f"{VERTEX}/text-embedding-005:predict"
    assert "missing required authentication" in err(
        httpx.post(vertex.base_url + url, json=instances("a"), timeout=TIMEOUT),
        401,
        "UNAUTHENTICATED",
    )
    bad = httpx.post(
        vertex.base_url + url,
        json=instances("a"),
        headers={"Authorization": "Bearer nope"},
        timeout=TIMEOUT,
    )
    assert "invalid authentication credentials" in err(bad, 401, "UNAUTHENTICATED")

    ok = vclient.post(url, json=instances(*[f"t{i}" for i in range(250)]))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 250
    assert "251 (exclusive)" in err(
        vclient.post(url, json=instances(*[f"t{i}" for i in range(251)])), 400, "INVALID_ARGUMENT"
    )
    gemini = vclient.post(f"{VERTEX}/gemini-embedding-001:predict", json=instances("a", "b"))
    assert (
        err(gemini, 400, "INVALID_ARGUMENT") == "1 instance(s) is allowed per prediction. Actual: 2"
    )

    assert "Publisher Model" in err(
        vclient.post(f"{VERTEX}/no-such-model:predict", json=instances("a")), 404, "NOT_FOUND"
    )
    err(vclient.post(url, json={"instances": []}), 400, "INVALID_ARGUMENT")
    err(vclient.post(url, json={"instances": [{"text": "no content"}]}), 400, "INVALID_ARGUMENT")
    err(
        vclient.post(url, json={**instances("a"), "parameters": {"outputDimensionality": 769}}),
        400,
        "INVALID_ARGUMENT",
    )

    long_text = "word " * 2100
    r = vclient.post(url, json=instances(long_text))
    assert r.json()["predictions"][0]["embeddings"]["statistics"] == {
        "truncated": True,
        "token_count": 2048,
    }
    err(
        vclient.post(url, json={**instances(long_text), "parameters": {"autoTruncate": False}}),
        400,
        "INVALID_ARGUMENT",
    )

    vertex.max_batch = 3  # the switch overrides the real limit
    err(vclient.post(url, json=instances("a", "b", "c", "d")), 400, "INVALID_ARGUMENT")
    assert vclient.post(url, json=instances("a", "b", "c")).status_code == 200

    with FakeVertex(token="t", project="right-project") as scoped:
        r = httpx.post(
            scoped.base_url + url,
            json=instances("a"),
            headers={"Authorization": "Bearer t"},
            timeout=TIMEOUT,
        )
        assert "aiplatform.endpoints.predict" in err(r, 403, "PERMISSION_DENIED")


def test_vertex_generate_and_stream(vertex: FakeVertex, vclient: httpx.Client):
    request = {"contents": [{"role": "user", "parts": [{"text": "Why is the sky blue today"}]}]}
    r = vclient.post(f"{VERTEX}/gemini-1.5-pro:generateContent", json=request)
    assert r.status_code == 200
    body = r.json()
    candidate = body["candidates"][0]
    assert candidate["content"] == {
        "role": "model",
        "parts": [{"text": "Echo: Why is the sky blue today"}],
    }
    assert candidate["finishReason"] == "STOP"
    usage = body["usageMetadata"]
    assert (
        usage["promptTokenCount"] == 6
        and usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    )
    assert body["modelVersion"] == "gemini-1.5-pro"

    r = vclient.post(f"{VERTEX}/gemini-1.5-pro:streamGenerateContent", json=request)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    chunks = r.json()
    assert isinstance(chunks, list) and len(chunks) > 1
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == "Echo: Why is the sky blue today"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP" and "usageMetadata" in chunks[-1]
    assert len({c["responseId"] for c in chunks}) == 1

    r = vclient.post(
        f"{VERTEX}/gemini-1.5-pro:streamGenerateContent", params={"alt": "sse"}, json=request
    )
    assert r.headers["content-type"] == "text/event-stream"
    events = [json.loads(line[len("data: ") :]) for line in r.text.split("\r\n\r\n") if line]
    assert len(events) == len(chunks)
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == text

    vertex.responder = lambda prompt: "true" if "sky" in prompt else "false"
    assert (
        vclient.post(f"{VERTEX}/gemini-2.0-flash:generateContent", json=request).json()[
            "candidates"
        ][0]["content"]["parts"][0]["text"]
        == "true"
    )
    assert (
        vclient.post(f"{VERTEX}/gemini-1.5-pro:generateContent", json={"contents": []}).status_code
        == 400
    )


# ---------------------------------------------------------------------- OpenAI
def test_openai_embeddings(openai: FakeOpenAI, oclient: httpx.Client):
    r = oclient.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hello"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "text-embedding-3-small"
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": embed("hello", 1536)}]
    assert body["usage"] == {"prompt_tokens": 1, "total_tokens": 1}

    for model, dim in [("text-embedding-ada-002", 1536), ("text-embedding-3-large", 3072)]:
        data = oclient.post("/v1/embeddings", json={"model": model, "input": ["a"]}).json()["data"]
        assert len(data[0]["embedding"]) == dim

    r = oclient.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-large", "input": ["a", "b"], "dimensions": 64},
    )
    vectors = [d["embedding"] for d in r.json()["data"]]
    assert [len(v) for v in vectors] == [64, 64] and math.isclose(
        norm(vectors[0]), 1.0, rel_tol=1e-9
    )

    r = oclient.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": ["a"], "encoding_format": "base64"},
    )
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == 1536 and decoded[0] == pytest.approx(embed("a", 1536)[0], rel=1e-6)

    texts = [f"text {i}" for i in range(12)]
    openai.shuffle = True
    data = oclient.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": texts, "dimensions": 8}
    ).json()["data"]
    assert [d["index"] for d in data] != list(range(12))
    assert {d["index"]: d["embedding"] for d in data} == {
        i: embed(t, 8) for i, t in enumerate(texts)
    }


def test_openai_errors(openai: FakeOpenAI, oclient: httpx.Client):
    def err(r: httpx.Response, status: int) -> dict:
        assert r.status_code == status
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        return r.json()["error"]

    url = openai.base_url + "/v1/embeddings"
    body = {"model": "text-embedding-3-small", "input": ["x"]}
    missing = err(httpx.post(url, json=body, timeout=TIMEOUT), 401)
    assert (
        missing["message"].startswith("You didn't provide an API key") and missing["code"] is None
    )
    wrong = err(
        httpx.post(
            url, json=body, headers={"Authorization": "Bearer sk-wrong-key-123"}, timeout=TIMEOUT
        ),
        401,
    )
    assert wrong["code"] == "invalid_api_key" and "sk-wrong-key-123" not in wrong["message"]

    assert (
        oclient.post(
            "/v1/embeddings", json={**body, "input": ["x"] * 2048, "dimensions": 4}
        ).status_code
        == 200
    )
    over = err(oclient.post("/v1/embeddings", json={**body, "input": ["x"] * 2049}), 400)
    assert (
        over["message"].startswith("'$.input' is invalid")
        and over["type"] == "invalid_request_error"
    )
    err(oclient.post("/v1/embeddings", json={**body, "input": ""}), 400)
    assert (
        err(oclient.post("/v1/embeddings", json={**body, "model": "nope"}), 404)["code"]
        == "model_not_found"
    )
    err(
        oclient.post(
            "/v1/embeddings",
            json={"model": "text-embedding-ada-002", "input": "x", "dimensions": 8},
        ),
        400,
    )
    openai.max_batch = 2
    err(oclient.post("/v1/embeddings", json={**body, "input": ["a", "b", "c"]}), 400)


def test_openai_chat_completions(openai: FakeOpenAI, oclient: httpx.Client):
    r = oclient.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi there"}]},
    )
    body = r.json()
    assert (
        r.status_code == 200
        and body["object"] == "chat.completion"
        and body["id"].startswith("chatcmpl-")
    )
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert (
        choice["message"]["role"] == "assistant"
        and choice["message"]["content"] == "Echo: Hi there"
    )
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert (
        oclient.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code == 400
    )
    # a chunked request body (no Content-Length) is read as well
    chunked = oclient.post(
        "/v1/chat/completions",
        content=iter(
            [b'{"model": "m", "messages": ', b'[{"role": "user", "content": "streamed"}]}']
        ),
        headers={"Content-Type": "application/json"},
    )
    assert openai.last_request is not None
    assert "content-length" not in openai.last_request.headers
    assert chunked.json()["choices"][0]["message"]["content"] == "Echo: streamed"


# ---------------------------------------------------------------------- Anthropic
def test_anthropic_messages_and_header_errors():
    with FakeAnthropic(api_key="sk-ant-right") as fake:
        headers = {"x-api-key": "sk-ant-right", "anthropic-version": "2023-06-01"}
        body = {
            "model": "claude-3-5-sonnet-20240620",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hello, Claude"}],
        }
        with httpx.Client(base_url=fake.base_url, timeout=TIMEOUT) as c:
            r = c.post("/v1/messages", json=body, headers=headers)
            assert r.status_code == 200
            msg = r.json()
            assert (
                msg["type"] == "message"
                and msg["role"] == "assistant"
                and msg["id"].startswith("msg_")
            )
            assert msg["content"] == [{"type": "text", "text": "Echo: Hello, Claude"}]
            assert msg["stop_reason"] == "end_turn" and msg["stop_sequence"] is None
            assert set(msg["usage"]) == {"input_tokens", "output_tokens"}
            assert r.headers["request-id"].startswith("req_")

            def err(resp: httpx.Response, status: int, type_: str) -> str:
                assert resp.status_code == status
                assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == type_
                return resp.json()["error"]["message"]

            no_key = {"anthropic-version": "2023-06-01"}
            assert (
                err(c.post("/v1/messages", json=body, headers=no_key), 401, "authentication_error")
                == "x-api-key header is required"
            )
            wrong = {**headers, "x-api-key": "sk-ant-wrong"}
            assert (
                err(c.post("/v1/messages", json=body, headers=wrong), 401, "authentication_error")
                == "invalid x-api-key"
            )
            assert err(
                c.post("/v1/messages", json=body, headers={"x-api-key": "sk-ant-right"}),
                400,
                "invalid_request_error",
            ) == ("anthropic-version: header is required")
            bad_version = {**headers, "anthropic-version": "2099-01-01"}
            assert "is not a valid version" in err(
                c.post("/v1/messages", json=body, headers=bad_version), 400, "invalid_request_error"
            )
            no_max = {k: v for k, v in body.items() if k != "max_tokens"}
            assert (
                err(
                    c.post("/v1/messages", json=no_max, headers=headers),
                    400,
                    "invalid_request_error",
                )
                == "max_tokens: Field required"
            )

            fake.fail_next(1, status=529)
            assert (
                err(c.post("/v1/messages", json=body, headers=headers), 529, "overloaded_error")
                == "Overloaded"
            )
            fake.fail_next(1, status=429, retry_after=7)
            r = c.post("/v1/messages", json=body, headers=headers)
            assert err(r, 429, "rate_limit_error") and r.headers["retry-after"] == "7"


# ---------------------------------------------------------------------- Hugging Face
def test_huggingface_feature_extraction_and_generation():
    with (
        FakeHuggingFace(token="hf_right") as fake,
        httpx.Client(
            base_url=fake.base_url, timeout=TIMEOUT, headers={"Authorization": "Bearer hf_right"}
        ) as c,
    ):
        model = "sentence-transformers/all-MiniLM-L6-v2"
        one = c.post(f"/models/{model}", json={"inputs": "hello"})
        assert one.status_code == 200 and one.json() == [embed("hello", 384)]
        many = c.post(
            f"/hf-inference/models/{model}/pipeline/feature-extraction", json={"inputs": ["a", "b"]}
        )
        assert many.json() == [embed("a", 384), embed("b", 384)]
        fake.single_as_batch = False  # the older pipelines' bare vector for a string
        assert c.post(f"/models/{model}", json={"inputs": "hello"}).json() == embed("hello", 384)
        assert len(c.post("/models/BAAI/bge-base-en-v1.5", json={"inputs": ["x"]}).json()[0]) == 768

        over = c.post(f"/models/{model}", json={"inputs": ["x"] * 33})
        assert over.status_code == 413 and over.json() == {
            "error": "batch size 33 > maximum allowed batch size 32",
            "error_type": "Validation",
        }
        gen = c.post(
            "/models/gpt2", json={"inputs": "Once upon a time", "parameters": {"max_new_tokens": 8}}
        )
        assert gen.json() == [{"generated_text": "Once upon a time and so the story continues."}]
        gen = c.post(
            "/models/gpt2", json={"inputs": "Hi", "parameters": {"return_full_text": False}}
        )
        assert gen.json() == [{"generated_text": " and so the story continues."}]
        assert c.post("/models/nobody/nothing", json={"inputs": "x"}).json() == {
            "error": "Model nobody/nothing does not exist"
        }

        fake.fail_next(1, status=503)
        loading = c.post(f"/models/{model}", json={"inputs": "x"})
        assert loading.status_code == 503 and set(loading.json()) == {"error", "estimated_time"}

        missing = httpx.post(
            f"{fake.base_url}/models/{model}", json={"inputs": "x"}, timeout=TIMEOUT
        )
        assert missing.status_code == 401 and missing.json() == {
            "error": "Invalid credentials in Authorization header"
        }
        wrong = httpx.post(
            f"{fake.base_url}/models/{model}",
            json={"inputs": "x"},
            headers={"Authorization": "Bearer hf_bad"},
            timeout=TIMEOUT,
        )
        assert wrong.status_code == 401 and "token seems invalid" in wrong.json()["error"]


# ---------------------------------------------------------------------- Secret Manager
def test_secret_manager_access():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    secrets = {
        "projects/my-project/secrets/openai-key": ["old", "sk-new"],
        "hf-token": b"\x00binary\xff",
    }
    with (
        FakeSecretManager(secrets, token="ya29.sm") as fake,
        httpx.Client(
            base_url=fake.base_url, timeout=TIMEOUT, headers={"Authorization": "Bearer ya29.sm"}
        ) as c,
    ):
        r = c.get("/v1/projects/my-project/secrets/openai-key/versions/latest:access")
        assert r.status_code == 200
        body = r.json()
        assert body["name"] == "projects/123456789012/secrets/openai-key/versions/2"
        assert base64.b64decode(body["payload"]["data"]) == b"sk-new"
        assert body["payload"]["dataCrc32c"] == str(crc32c(b"sk-new"))
        assert (
            base64.b64decode(
                c.get("/v1/projects/my-project/secrets/openai-key/versions/1:access").json()[
                    "payload"
                ]["data"]
            )
            == b"old"
        )
        assert (
            base64.b64decode(
                c.get("/v1/projects/42/secrets/hf-token/versions/1:access").json()["payload"][
                    "data"
                ]
            )
            == b"\x00binary\xff"
        )

        def err(resp: httpx.Response, status: int, name: str) -> str:
            assert resp.status_code == status and resp.json()["error"]["status"] == name
            return resp.json()["error"]["message"]

        assert "not found or has no versions" in err(
            c.get("/v1/projects/my-project/secrets/nope/versions/1:access"), 404, "NOT_FOUND"
        )
        err(c.get("/v1/projects/my-project/secrets/openai-key/versions/3:access"), 404, "NOT_FOUND")
        err(
            httpx.get(
                fake.base_url + "/v1/projects/p/secrets/hf-token/versions/1:access", timeout=TIMEOUT
            ),
            401,
            "UNAUTHENTICATED",
        )
        fake.secrets["added-later"] = "v"
        assert c.get("/v1/projects/p/secrets/added-later/versions/latest:access").status_code == 200


# ---------------------------------------------------------------------- switches
def test_fail_next_then_recovers(vertex: FakeVertex, vclient: httpx.Client):
    url = f"{VERTEX}/text-embedding-005:predict"
    vertex.fail_next(2, status=429, retry_after=3)
    vertex.fail_next(1, status=500)
    first = vclient.post(url, json=instances("a"))
    assert first.status_code == 429 and first.headers["retry-after"] == "3"
    assert first.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert vclient.post(url, json=instances("a")).status_code == 429
    server_error = vclient.post(url, json=instances("a"))
    assert server_error.status_code == 500 and server_error.json()["error"]["status"] == "INTERNAL"
    assert "retry-after" not in server_error.headers
    assert vclient.post(url, json=instances("a")).status_code == 200
    vertex.fail_next(1, status=503, body={"custom": True})
    assert vclient.post(url, json=instances("a")).json() == {"custom": True}
    assert vertex.request_count == 5


def test_openai_fail_next_uses_openai_error_shape(openai: FakeOpenAI, oclient: httpx.Client):
    openai.fail_next(1, status=429, retry_after=1)
    r = oclient.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    openai.fail_next(1, status=500)
    assert (
        oclient.post(
            "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}
        ).json()["error"]["type"]
        == "server_error"
    )


def test_latency_is_added(vertex: FakeVertex, vclient: httpx.Client):
    vertex.latency = 0.3
    started = time.monotonic()
    assert (
        vclient.post(f"{VERTEX}/text-embedding-005:predict", json=instances("a")).status_code == 200
    )
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        vclient.post(f"{VERTEX}/text-embedding-005:predict", json=instances("a"), timeout=0.1)


def test_hang_next_times_out_then_serves(vertex: FakeVertex, vclient: httpx.Client):
    vertex.hang_next(1)
    with pytest.raises(httpx.ReadTimeout):
        vclient.post(f"{VERTEX}/text-embedding-005:predict", json=instances("a"), timeout=0.2)
    assert (
        vclient.post(f"{VERTEX}/text-embedding-005:predict", json=instances("a")).status_code == 200
    )
    assert vertex.request_count == 2


def test_stop_releases_hung_requests_quickly():
    fake = FakeOpenAI(api_key="k")
    fake.hang_next(3)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(
                fake.base_url + "/v1/embeddings",
                json={"model": "text-embedding-3-small", "input": "x"},
                headers={"Authorization": "Bearer k"},
                timeout=10,
            )
        except httpx.HTTPError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    assert fake.wait_for_requests(3, timeout=5)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0
    for t in threads:
        t.join(timeout=5)
        assert not t.is_alive()
    assert len(errors) == 3  # the client sees the connection go, not an answer
    fake.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(fake.base_url + "/", timeout=1)


def test_bad_body_next(
    vertex: FakeVertex, vclient: httpx.Client, openai: FakeOpenAI, oclient: httpx.Client
):
    url = f"{VERTEX}/text-embedding-005:predict"
    vertex.bad_body_next(1)
    r = vclient.post(url, json=instances("a", "b"))
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    vertex.bad_body_next(1, kind="shape")
    r = vclient.post(url, json=instances("a", "b"))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1  # one embedding short
    assert len(vclient.post(url, json=instances("a", "b")).json()["predictions"]) == 2

    openai.bad_body_next(1, kind="shape")
    data = oclient.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 4},
    ).json()["data"]
    assert len(data) == 1
    with pytest.raises(ValueError):
        vertex.bad_body_next(1, kind="other")


def test_concurrent_requests_are_all_recorded(openai: FakeOpenAI):
    statuses: list[int] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        r = httpx.post(
            openai.base_url + "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": f"t{i}", "dimensions": 4},
            headers={"Authorization": "Bearer sk-right-key"},
            timeout=TIMEOUT,
        )
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert statuses == [200] * 20
    assert openai.request_count == 20
    assert sorted(r.json["input"] for r in openai.requests) == sorted(f"t{i}" for i in range(20))
    assert openai.last_request is not None
    openai.reset()
    assert openai.request_count == 0 and openai.requests == []


def test_credential_can_change_at_runtime(openai: FakeOpenAI, oclient: httpx.Client):
    body = {"model": "text-embedding-3-small", "input": "x", "dimensions": 4}
    assert oclient.post("/v1/embeddings", json=body).status_code == 200
    openai.credential = "sk-rotated"
    assert oclient.post("/v1/embeddings", json=body).status_code == 401
    assert (
        oclient.post(
            "/v1/embeddings", json=body, headers={"Authorization": "Bearer sk-rotated"}
        ).status_code
        == 200
    )
