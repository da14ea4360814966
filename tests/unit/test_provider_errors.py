"""How the engine words provider failures: what a user reads in the SQL error."""

from __future__ import annotations

import httpx
import pytest

from proxy.engine.credentials import StaticCredentials
from proxy.engine.engine import Engine
from proxy.engine.errors import ProviderError
from proxy.engine.models import ModelConfig
from proxy.engine.settings import EngineSettings

OPENAI = ModelConfig(
    model_id="oa",
    model_request_url="https://api.openai.com/v1/embeddings",
    model_provider="open_ai",
    model_type="text_embedding",
    model_qualified_name="text-embedding-3-small",
)


async def no_sleep(seconds: float) -> None:
    raise AssertionError(f"the engine slept {seconds} s")


def engine_answering(response: httpx.Response, **settings: float) -> tuple[Engine, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return response

    engine = Engine(
        EngineSettings(**settings),
        StaticCredentials(default="sk-secret-value"),
        transport=httpx.MockTransport(handler),
        sleep=no_sleep,
        rng=lambda: 0.0,
    )
    return engine, requests


async def test_retry_after_past_the_limit_says_why_the_proxy_did_not_wait():
    engine, requests = engine_answering(
        httpx.Response(
            429,
            json={"error": {"message": "Rate limit reached"}},
            headers={"Retry-After": "3600"},
        ),
        max_retry_after=60,
    )
    async with engine:
        with pytest.raises(ProviderError) as caught:
            await engine.embed(OPENAI, ["x"])
    assert str(caught.value) == (
        'model "oa": OpenAI returned HTTP 429: Rate limit reached '
        "(asked to retry after 3600 s; pg-model-proxy waits at most 60 s)"
    )
    assert caught.value.provider_message == "Rate limit reached"
    assert len(requests) == 1
