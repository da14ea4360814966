"""The provider engine over httpx.MockTransport: dedup, batching, order, retries, deadlines,
cancellation, bad answers, secret scrubbing, the concurrency bound. Time is fake unless a test
needs a request to really hang."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from proxy.engine.credentials import StaticCredentials
from proxy.engine.engine import Engine
from proxy.engine.errors import (
    BadModelResponse,
    ModelConfigError,
    ModelTimeout,
    ModelUnavailable,
    ProviderError,
)
from proxy.engine.models import ModelConfig
from proxy.engine.settings import EngineSettings

SECRET = "sk-test-0123456789"

OPENAI = ModelConfig(
    model_id="oa",
    model_request_url="https://api.openai.com/v1/embeddings",
    model_provider="open_ai",
    model_type="text_embedding",
    model_qualified_name="text-embedding-3-small",
    model_auth_type="secret_manager",
    model_auth_id="openai-key",
)
VERTEX = ModelConfig(
    model_id="vx",
    model_request_url="publishers/google/models/text-embedding-005",
    model_provider="google",
    model_type="text_embedding",
    model_qualified_name="text-embedding-005",
)
GEMINI_EMBEDDING = ModelConfig(  # one instance per request: one request per text
    model_id="ge",
    model_request_url="publishers/google/models/gemini-embedding-001",
    model_provider="google",
    model_type="text_embedding",
    model_qualified_name="gemini-embedding-001",
)
CLAUDE = ModelConfig(
    model_id="claude",
    model_request_url="https://api.anthropic.com/v1/messages",
    model_provider="anthropic",
    model_qualified_name="claude-3-haiku-20240307",
)
CUSTOM = ModelConfig(model_id="c", model_request_url="https://models.example/predict")

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class FakeTime:
    """A monotonic clock that only moves when the engine sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_750_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def make_engine(handler: Recorder, fake: FakeTime | None = None, **settings: Any) -> Engine:
    fake = fake or FakeTime()
    options: dict[str, Any] = {"google_project": "proj", "max_attempts": 3} | settings
    return Engine(
        EngineSettings(**options),
        StaticCredentials(default=SECRET),
        transport=httpx.MockTransport(handler),
        clock=fake.clock,
        wall_clock=fake.wall,
        sleep=fake.sleep,
        rng=lambda: 0.0,
    )


def vector_of(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 997)]


def openai_answer(request: httpx.Request) -> httpx.Response:
    inputs = json.loads(request.content)["input"]
    data = [
        {"object": "embedding", "index": i, "embedding": vector_of(t)} for i, t in enumerate(inputs)
    ]
    return httpx.Response(
        200, json={"object": "list", "data": data, "model": "text-embedding-3-small"}
    )


def vertex_answer(request: httpx.Request) -> httpx.Response:
    instances = json.loads(request.content)["instances"]
    return httpx.Response(
        200,
        json={
            "predictions": [{"embeddings": {"values": vector_of(i["content"])}} for i in instances]
        },
    )


class Recorder:
    """A handler that records requests and answers with `answer` (or a scripted list)."""

    def __init__(self, *answers: Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        result = answer(request)
        return await result if isinstance(result, Awaitable) else result

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests]


def status(code: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(code, json=body, headers=headers)


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


# -- dedup, batching, order ---------------------------------------------------------------------


async def test_duplicate_texts_are_sent_once_per_call():
    recorder = Recorder(openai_answer)
    texts = ["red", "green", "red", "blue", "red", "green", "blue", "red", "blue", "green"]
    async with make_engine(recorder) as engine:
        vectors = await engine.embed(OPENAI, texts)
    assert [b["input"] for b in recorder.bodies()] == [["red", "green", "blue"]]
    assert vectors == [vector_of(t) for t in texts]
    request = recorder.requests[0]
    assert str(request.url) == "https://api.openai.com/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["user-agent"] == "pg-model-proxy"


async def test_openai_batches_at_2048_inputs():
    recorder = Recorder(openai_answer)
    texts = [f"text {i}" for i in range(2049)]
    async with make_engine(recorder) as engine:
        vectors = await engine.embed(OPENAI, texts)
    assert sorted(len(b["input"]) for b in recorder.bodies()) == [1, 2048]
    assert vectors == [vector_of(t) for t in texts]


async def test_vertex_batches_at_250_instances():
    recorder = Recorder(vertex_answer)
    texts = [f"doc {i}" for i in range(251)]
    async with make_engine(recorder) as engine:
        vectors = await engine.embed(VERTEX, texts)
    assert sorted(len(b["instances"]) for b in recorder.bodies()) == [1, 250]
    assert {str(r.url) for r in recorder.requests} == {
        "https://us-central1-aiplatform.googleapis.com/v1/projects/proj/locations/us-central1/"
        "publishers/google/models/text-embedding-005:predict"
    }
    assert vectors == [vector_of(t) for t in texts]


async def test_shuffled_openai_data_is_put_back_in_input_order():
    def shuffled(request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["input"]
        data = [{"index": i, "embedding": vector_of(t)} for i, t in enumerate(inputs)]
        order = [3, 0, 4, 1, 2]
        return httpx.Response(200, json={"data": [data[i] for i in order]})

    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    async with make_engine(Recorder(shuffled)) as engine:
        assert await engine.embed(OPENAI, texts) == [vector_of(t) for t in texts]


async def test_no_texts_no_request():
    recorder = Recorder(openai_answer)
    async with make_engine(recorder) as engine:
        assert await engine.embed(OPENAI, []) == []
    assert recorder.requests == []


async def test_embedding_a_model_without_native_support_is_a_config_error():
    async with make_engine(Recorder(openai_answer)) as engine:
        with pytest.raises(ModelConfigError, match="transform functions") as caught:
            await engine.embed(CLAUDE, ["x"])
    assert caught.value.sqlstate == "22023"


# -- concurrency ---------------------------------------------------------------------------------


async def test_concurrency_per_model_is_bounded():
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return vertex_answer(request)

    recorder = Recorder(slow)
    texts = [f"t{i}" for i in range(12)]
    async with make_engine(recorder, max_concurrency_per_model=3) as engine:
        vectors = await engine.embed(GEMINI_EMBEDDING, texts)
        assert engine.limits.in_flight("ge") == 0
    assert len(recorder.requests) == 12
    assert peak == 3
    assert vectors == [vector_of(t) for t in texts]


# -- retries ---------------------------------------------------------------------------------------


async def test_429_waits_for_retry_after_seconds():
    fake = FakeTime()
    recorder = Recorder(
        status(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"}), openai_answer
    )
    async with make_engine(recorder, fake) as engine:
        assert await engine.embed(OPENAI, ["x"]) == [vector_of("x")]
    assert len(recorder.requests) == 2
    assert fake.sleeps == [7.0]


async def test_429_waits_for_retry_after_http_date():
    fake = FakeTime()
    when = datetime.fromtimestamp(fake.wall() + 20, tz=UTC)
    recorder = Recorder(
        status(429, None, {"Retry-After": format_datetime(when, usegmt=True)}), openai_answer
    )
    async with make_engine(recorder, fake) as engine:
        await engine.embed(OPENAI, ["x"])
    assert fake.sleeps == [20.0]


async def test_500_is_retried_with_exponential_backoff():
    fake = FakeTime()
    recorder = Recorder(status(500), status(502), openai_answer)
    async with make_engine(recorder, fake, max_attempts=5, backoff_base=1.0) as engine:
        assert await engine.embed(OPENAI, ["x"]) == [vector_of("x")]
    assert len(recorder.requests) == 3
    assert fake.sleeps == [0.5, 1.0]  # rng 0: half of base * 2**(n-1)


async def test_transport_timeout_is_retried():
    recorder = Recorder(raising(httpx.ReadTimeout("read timed out")), openai_answer)
    async with make_engine(recorder) as engine:
        assert await engine.embed(OPENAI, ["x"]) == [vector_of("x")]
    assert len(recorder.requests) == 2


async def test_attempt_that_hangs_past_request_timeout_is_retried():
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    recorder = Recorder(hang, openai_answer)
    async with make_engine(recorder, request_timeout=0.02) as engine:
        assert await engine.embed(OPENAI, ["x"]) == [vector_of("x")]
    assert len(recorder.requests) == 2


async def test_gives_up_after_max_attempts_with_the_providers_message():
    fake = FakeTime()
    recorder = Recorder(status(503, {"error": {"message": "The model is overloaded", "code": 503}}))
    async with make_engine(recorder, fake, max_attempts=3) as engine:
        with pytest.raises(ProviderError) as caught:
            await engine.embed(OPENAI, ["x"])
    error = caught.value
    assert len(recorder.requests) == 3 and len(fake.sleeps) == 2
    assert error.status == 503
    assert error.provider_message == "The model is overloaded"
    assert (
        str(error)
        == 'model "oa": OpenAI returned HTTP 503: The model is overloaded (gave up after 3 attempts)'
    )
    assert error.sqlstate == "38000"


async def test_client_errors_are_not_retried():
    recorder = Recorder(status(400, {"error": {"message": "'$.input' is invalid"}}))
    async with make_engine(recorder) as engine:
        with pytest.raises(ProviderError, match=r"HTTP 400: '\$.input' is invalid$"):
            await engine.embed(OPENAI, ["x"])
    assert len(recorder.requests) == 1


async def test_retry_after_beyond_the_limit_gives_up_at_once():
    fake = FakeTime()
    recorder = Recorder(
        status(429, {"error": {"message": "come back tomorrow"}}, {"Retry-After": "86400"})
    )
    async with make_engine(recorder, fake, max_retry_after=60) as engine:
        with pytest.raises(ProviderError, match="come back tomorrow"):
            await engine.embed(OPENAI, ["x"])
    assert len(recorder.requests) == 1 and fake.sleeps == []


async def test_connection_errors_are_retried_then_reported():
    recorder = Recorder(raising(httpx.ConnectError("connection refused")))
    async with make_engine(recorder) as engine:
        with pytest.raises(
            ModelUnavailable, match="cannot reach OpenAI at api.openai.com: connection refused"
        ):
            await engine.embed(OPENAI, ["x"])
    assert len(recorder.requests) == 3


# -- deadlines -------------------------------------------------------------------------------------


async def test_retry_that_would_end_past_the_deadline_is_not_attempted():
    fake = FakeTime()
    recorder = Recorder(
        status(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "30"})
    )
    async with make_engine(recorder, fake, max_attempts=10) as engine:
        with pytest.raises(ModelTimeout) as caught:
            await engine.embed(OPENAI, ["x"], deadline=engine.deadline_in(5))
    assert len(recorder.requests) == 1 and fake.sleeps == []
    assert "statement timeout" in str(caught.value) and "Rate limit reached" in str(caught.value)
    assert caught.value.sqlstate == "57014"


async def test_backoff_stops_at_the_deadline():
    fake = FakeTime()
    recorder = Recorder(status(500))
    async with make_engine(
        recorder, fake, max_attempts=50, backoff_base=1.0, backoff_max=4.0
    ) as engine:
        with pytest.raises(ModelTimeout):
            await engine.embed(OPENAI, ["x"], deadline=fake.now + 10)
    assert sum(fake.sleeps) < 10
    assert len(recorder.requests) == len(fake.sleeps) + 1


async def test_deadline_already_past_sends_nothing():
    recorder = Recorder(openai_answer)
    fake = FakeTime()
    async with make_engine(recorder, fake) as engine:
        with pytest.raises(ModelTimeout):
            await engine.predict(CUSTOM, "{}", deadline=fake.now - 1)
    assert recorder.requests == []


async def test_request_hanging_past_the_deadline_is_abandoned():
    cancelled = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    recorder = Recorder(hang)
    engine = Engine(
        EngineSettings(max_attempts=5),
        StaticCredentials(default=SECRET),
        transport=httpx.MockTransport(recorder),
    )
    async with engine:
        started = time.monotonic()
        with pytest.raises(ModelTimeout, match="due to statement timeout"):
            await engine.embed(OPENAI, ["x"], deadline=engine.deadline_in(0.05))
        assert time.monotonic() - started < 2
    assert cancelled.is_set()
    assert len(recorder.requests) == 1


# -- cancellation -----------------------------------------------------------------------------------


async def test_cancelling_the_call_cancels_in_flight_requests():
    started = 0
    cancelled = 0
    all_started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        nonlocal started, cancelled
        started += 1
        if started == 4:
            all_started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        raise AssertionError("not reached")

    async with make_engine(Recorder(hang), max_concurrency_per_model=4) as engine:
        call = asyncio.create_task(engine.embed(GEMINI_EMBEDDING, ["a", "b", "c", "d", "e", "f"]))
        await asyncio.wait_for(all_started.wait(), 2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert cancelled == 4 and started == 4  # the two queued batches never went out
        assert engine.limits.in_flight("ge") == 0


async def test_one_failing_batch_fails_the_call_and_cancels_the_others():
    async def answer(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["instances"][0]["content"]
        if text == "bad":
            return httpx.Response(
                400, json={"error": {"message": "bad input", "status": "INVALID_ARGUMENT"}}
            )
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    async with make_engine(Recorder(answer)) as engine:
        with pytest.raises(ProviderError, match="Vertex AI returned HTTP 400: bad input"):
            await asyncio.wait_for(engine.embed(GEMINI_EMBEDDING, ["a", "bad", "c"]), 2)


# -- bad answers -------------------------------------------------------------------------------------


async def test_wrong_shape_is_a_bad_response_and_not_retried():
    recorder = Recorder(status(200, {"data": "nope"}))
    async with make_engine(recorder) as engine:
        with pytest.raises(
            BadModelResponse, match='model "oa": unexpected response from OpenAI: no data array'
        ):
            await engine.embed(OPENAI, ["x"])
    assert len(recorder.requests) == 1


async def test_dimensions_must_agree_across_batches():
    def answer(request: httpx.Request) -> httpx.Response:
        instances = json.loads(request.content)["instances"]
        size = 2 if len(instances) == 250 else 3
        return httpx.Response(
            200, json={"predictions": [{"embeddings": {"values": [0.5] * size}} for _ in instances]}
        )

    async with make_engine(Recorder(answer)) as engine:
        with pytest.raises(BadModelResponse, match="different dimensions"):
            await engine.embed(VERTEX, [f"t{i}" for i in range(251)])


async def test_non_numeric_values_are_a_bad_response():
    answer = status(200, {"data": [{"index": 0, "embedding": [0.1, "0.2"]}]})
    async with make_engine(Recorder(answer)) as engine:
        with pytest.raises(BadModelResponse, match=r"data\[0\]\.embedding\[1\] is not a number"):
            await engine.embed(OPENAI, ["x"])


# -- secrets -------------------------------------------------------------------------------------------


async def test_secrets_are_scrubbed_from_provider_errors():
    def echo(request: httpx.Request) -> httpx.Response:
        key = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(
            401, json={"error": {"message": f"Incorrect API key provided: {key}."}}
        )

    async with make_engine(Recorder(echo)) as engine:
        with pytest.raises(ProviderError) as caught:
            await engine.embed(OPENAI, ["x"])
    assert SECRET not in str(caught.value) and SECRET not in caught.value.provider_message
    assert (
        str(caught.value)
        == 'model "oa": OpenAI returned HTTP 401: Incorrect API key provided: ***.'
    )


async def test_secrets_are_scrubbed_from_deadline_errors_and_header_function_headers():
    fake = FakeTime()

    def echo(request: httpx.Request) -> httpx.Response:
        headers = f"{request.headers['x-api-key']} / {request.headers['x-custom-token']}"
        return httpx.Response(
            429, json={"error": {"message": f"bad {headers}"}}, headers={"Retry-After": "50"}
        )

    async with make_engine(Recorder(echo), fake) as engine:
        with pytest.raises(ModelTimeout) as caught:
            await engine.predict(
                CLAUDE,
                {"messages": []},
                headers={"X-Custom-Token": "tok-abcdef"},
                deadline=fake.now + 10,
            )
    message = str(caught.value)
    assert SECRET not in message and "tok-abcdef" not in message
    assert "bad *** / ***" in message


# -- predict_row ---------------------------------------------------------------------------------------


async def test_predict_sends_the_body_unchanged_and_returns_the_json():
    recorder = Recorder(status(200, {"score": 0.75, "labels": ["a"]}))
    raw = '{"instances":  [ {"x": 1.50} ],"parameters":{}}'
    async with make_engine(recorder) as engine:
        result = await engine.predict(CUSTOM, raw, headers={"X-Trace": "1"})
    assert result == {"score": 0.75, "labels": ["a"]}
    request = recorder.requests[0]
    assert request.content == raw.encode()
    assert str(request.url) == "https://models.example/predict"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["x-trace"] == "1"
    assert request.headers["content-type"] == "application/json"


async def test_predict_anthropic_headers():
    recorder = Recorder(
        status(200, {"type": "message", "content": [{"type": "text", "text": "hi"}]})
    )
    body = {
        "model": "claude-3-haiku-20240307",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    settings = {"anthropic_base_url": "http://127.0.0.1:9/"}
    async with make_engine(recorder, **settings) as engine:
        result = await engine.predict(
            CLAUDE, body, headers={"anthropic-version": "2023-06-01", "anthropic-beta": "x"}
        )
    assert result["content"][0]["text"] == "hi"
    request = recorder.requests[0]
    assert str(request.url) == "http://127.0.0.1:9/v1/messages"
    assert request.headers["x-api-key"] == SECRET
    assert request.headers.get_list("anthropic-version") == ["2023-06-01"]
    assert request.headers["anthropic-beta"] == "x"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == body


async def test_predict_stream_generate_content_returns_the_array():
    chunks = [
        {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "lo"}]}}]},
    ]
    recorder = Recorder(status(200, chunks))
    model = ModelConfig(
        model_id="gemini-1.5-pro:streamGenerateContent",
        model_request_url="publishers/google/models/gemini-1.5-pro:streamGenerateContent",
        model_provider="google",
        model_auth_type="alloydb_service_agent_iam",
    )
    async with make_engine(recorder, google_region="europe-west4") as engine:
        assert await engine.predict(model, {"contents": []}) == chunks
    assert str(recorder.requests[0].url) == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/proj/locations/europe-west4/"
        "publishers/google/models/gemini-1.5-pro:streamGenerateContent"
    )


async def test_unsupported_provider_is_a_config_error():
    model = ModelConfig(model_id="az", model_request_url="https://x", model_provider="azure_openai")
    async with make_engine(Recorder(openai_answer)) as engine:
        with pytest.raises(
            ModelConfigError, match='model "az": provider "azure_openai" is not supported'
        ):
            await engine.predict(model, {})
