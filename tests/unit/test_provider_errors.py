"""How the engine words provider failures: what a user reads in the SQL error."""

from __future__ import annotations

import httpx
import pytest

from proxy.engine.credentials import StaticCredentials
from proxy.engine.engine import Engine
from proxy.engine.errors import BadModelResponse, ProviderError
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


CLOUDFLARE_502 = """<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<html lang="en-US">
<head>
<title>api.openai.com | 502: Bad gateway</title>
<meta charset="UTF-8" />
<style>body { margin: 0; padding: 0 } .cf-error-code { font-size: 2rem }</style>
</head>
<body><div id="cf-wrapper"><h1><span class="cf-error-type">Bad gateway</span>
<span class="cf-error-code">Error code 502</span></h1></div>
<script>window._cf_translation = {};</script></body></html>
"""


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        # a load balancer's page: its title
        (CLOUDFLARE_502, "text/html; charset=UTF-8", "api.openai.com | 502: Bad gateway"),
        # no title: the visible text, without scripts, styles or entities
        (
            "<html><head><style>p {}</style></head><body><p>Service&nbsp;down &amp; out</p>"
            "<script>var x = '<b>';</script></body></html>",
            "text/html",
            "Service down & out",
        ),
        # HTML without an HTML content type is still recognised
        ("<html><title>503 Service Unavailable</title></html>", "application/json", "503 Service Unavailable"),
        # plain text stays as it is, white space folded
        ("upstream connect error or\n  disconnect/reset before headers", "text/plain", "upstream connect error or disconnect/reset before headers"),
        # a JSON error body wins over everything
        ('{"error": {"message": "<b>bold</b> claim"}}', "application/json", "<b>bold</b> claim"),
    ],
)
async def test_error_pages_are_reported_as_text(body: str, content_type: str, expected: str):
    engine, _ = engine_answering(
        httpx.Response(400, content=body.encode(), headers={"Content-Type": content_type})
    )
    async with engine:
        with pytest.raises(ProviderError) as caught:
            await engine.embed(OPENAI, ["x"])
    assert caught.value.provider_message == expected
    assert str(caught.value) == f'model "oa": OpenAI returned HTTP 400: {expected}'


async def test_a_200_html_page_is_named_by_its_title():
    page = (
        "<!DOCTYPE html><html><head><title>Sign in to the network</title></head>"
        "<body><form>...</form></body></html>"
    )
    engine, _ = engine_answering(
        httpx.Response(200, content=page.encode(), headers={"Content-Type": "text/html"})
    )
    async with engine:
        with pytest.raises(BadModelResponse) as caught:
            await engine.embed(OPENAI, ["x"])
    assert str(caught.value) == (
        "model \"oa\": unexpected response from OpenAI: an HTML page, not JSON: "
        "'Sign in to the network'"
    )
