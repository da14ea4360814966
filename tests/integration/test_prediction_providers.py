"""Prediction through the proxy for Vertex AI (Google credentials) and Anthropic.

Vertex AI models use `alloydb_service_agent_iam`: the proxy signs a JWT with its service
account key (--google-key-file) and trades it for an access token at the token endpoint (the
fake OAuth server), as google-auth does against Google. Relative request URLs
(`publishers/google/models/...`) are resolved against --google-project and --google-region.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.google_oauth import FakeGoogleOAuth
from tests.fakes.vertex import FakeVertex
from tests.support import ProxyProcess, service_account_key

TOKEN = "ya29.proxy-test-token"
ANTHROPIC_KEY = "sk-ant-proxy-test"
PROJECT = "pgmp-test-project"


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeGoogleOAuth, FakeVertex, FakeAnthropic]]:
    with (
        FakeGoogleOAuth(access_token=TOKEN) as oauth,
        FakeVertex(TOKEN, project=PROJECT) as vertex,
        FakeAnthropic(ANTHROPIC_KEY) as anthropic,
    ):
        yield oauth, vertex, anthropic


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, fakes) -> Path:
    oauth = fakes[0]
    return service_account_key(tmp_path_factory.mktemp("gcp"), project=PROJECT, token_uri=oauth.token_uri)


@pytest.fixture(scope="module")
def proxy_with_providers(database, fakes, key_file) -> Iterator[ProxyProcess]:
    _, vertex, anthropic = fakes
    p = ProxyProcess(
        [
            "--upstream", database.upstream,
            "--google-key-file", str(key_file),
            "--google-project", PROJECT,
            "--google-region", "us-central1",
            "--vertex-base-url", vertex.base_url,
            "--anthropic-base-url", anthropic.base_url,
        ],
        env={"PGMP_TEST_ANTHROPIC_KEY": ANTHROPIC_KEY},
        superuser_password=database.password,
    ).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def conn(database, proxy_with_providers) -> Iterator[psycopg.Connection]:
    with database.scratch("providers") as name:
        with psycopg.connect(proxy_with_providers.dsn(database=name), autocommit=True) as c:
            c.execute("CREATE EXTENSION google_ml_integration")
            yield c


def close_to(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def test_vertex_builtin_model_of_the_seed_document(conn, fakes):
    _, vertex, _ = fakes
    conn.execute(
        "CALL google_ml.create_model(model_id => 'text-embedding-005', model_provider => 'google', "
        "model_qualified_name => 'text-embedding-005', model_type => 'text_embedding', "
        "model_auth_type => 'alloydb_service_agent_iam')"
    )
    value = conn.execute(
        "SELECT google_ml.embedding(model_id => 'text-embedding-005', content => 'AlloyDB is a managed, "
        "cloud-hosted SQL database service.')"
    ).fetchone()[0]
    assert close_to(
        value,
        FakeVertex.expected_embedding("AlloyDB is a managed, cloud-hosted SQL database service.", "text-embedding-005"),
    )
    request = vertex.requests[-1]
    assert request.path == (
        f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/text-embedding-005:predict"
    )
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json["instances"][0]["content"].startswith("AlloyDB is")


def test_vertex_pre_registered_gemini_generate_and_stream(conn):
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "What is AlloyDB?"}]}]})
    answer = conn.execute(
        "SELECT google_ml.predict_row('gemini-1.5-pro:generateContent', %s::json) "
        "-> 'candidates' -> 0 -> 'content' -> 'parts' -> 0 ->> 'text'",
        (body,),
    ).fetchone()[0]
    assert isinstance(answer, str) and answer
    # The SPEC's example: the streaming response is a JSON array of chunks.
    texts = conn.execute(
        "SELECT json_array_elements(google_ml.predict_row('gemini-1.5-pro:streamGenerateContent', %s::json))"
        " -> 'candidates' -> 0 -> 'content' -> 'parts' -> 0 -> 'text'",
        (body,),
    ).fetchall()
    assert texts and all(t[0] is not None for t in texts)


def test_anthropic_messages_with_a_secret(conn, fakes):
    _, _, anthropic = fakes
    conn.execute("CALL google_ml.create_sm_secret('anthropic-key', 'env:PGMP_TEST_ANTHROPIC_KEY')")
    conn.execute(
        "CALL google_ml.create_model(model_id => 'claude', model_provider => 'anthropic', "
        "model_qualified_name => 'claude-3-haiku-20240307', model_auth_type => 'secret_manager', "
        "model_auth_id => 'anthropic-key')"
    )
    body = json.dumps(
        {"model": "claude-3-haiku-20240307", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
    )
    text = conn.execute(
        "SELECT ml_predict_row('claude', %s::json) -> 'content' -> 0 ->> 'text'", (body,)
    ).fetchone()[0]
    assert isinstance(text, str) and text
    request = anthropic.requests[-1]
    assert request.headers["x-api-key"] == ANTHROPIC_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.json == json.loads(body)  # the request body goes unchanged
