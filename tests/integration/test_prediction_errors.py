"""Bad provider answers become SQL errors, through the proxy: OpenAI, Vertex AI, Hugging Face.

Each failure is scripted on the fake provider (tests/fakes: hangs, statuses with the provider's
own error body, 200s of the wrong shape) and met through psycopg like any SQL error: a clear
message naming the model and the provider, a SQLSTATE a program can act on, the provider's own
words where it gave any, and never the secret. After each, the session keeps working and the
model answers again.

The proxy runs with --model-timeout 1 (seconds per HTTP attempt) and --log-level debug, so the
secret-scrubbing checks cover every line it logs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.fakes.google_oauth import FakeGoogleOAuth
from tests.fakes.huggingface import FakeHuggingFace
from tests.fakes.openai import FakeOpenAI
from tests.fakes.shapes import BadShapes
from tests.fakes.vertex import FakeVertex
from tests.support import ProxyProcess, service_account_key, wait_until

OPENAI_KEY = "sk-proj-errorsTestKey0123456789"
VERTEX_TOKEN = "ya29.errors-test-access-token"
HF_TOKEN = "hf_errorsTestToken9876543210"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PROJECT = "pgmp-errors-project"
ATTEMPTS = 5  # the engine's max_attempts


@dataclass(frozen=True)
class Target:
    """A registered embedding model and the fake behind it."""

    model_id: str
    label: str  # how the proxy's messages name the provider
    fake: BadShapes
    secret: str  # what goes out as the Bearer credential
    dim: int
    expected: Callable[[str], list[float]]
    missing: str  # the proxy's words for a 200 without the vector array
    short: str  # ... and for one vector fewer than inputs (two inputs sent)

    def error_body(self, message: str) -> dict:
        """The provider's own 500 error JSON with `message`."""
        if self.label == "OpenAI":
            return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        if self.label == "Vertex AI":
            return {"error": {"code": 500, "message": message, "status": "INTERNAL"}}
        return {"error": message}  # Hugging Face


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeGoogleOAuth, FakeVertex, FakeHuggingFace]]:
    with (
        FakeOpenAI(OPENAI_KEY) as openai,
        FakeGoogleOAuth(access_token=VERTEX_TOKEN) as oauth,
        FakeVertex(VERTEX_TOKEN, project=PROJECT) as vertex,
        FakeHuggingFace(HF_TOKEN) as hf,
    ):
        yield openai, oauth, vertex, hf


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, fakes) -> Path:
    oauth = fakes[1]
    return service_account_key(tmp_path_factory.mktemp("gcp-errors"), project=PROJECT, token_uri=oauth.token_uri)


@pytest.fixture(scope="module")
def error_proxy(database, fakes, key_file) -> Iterator[ProxyProcess]:
    openai, _, vertex, hf = fakes
    p = ProxyProcess(
        [
            "--upstream", database.upstream,
            "--openai-base-url", openai.base_url,
            "--vertex-base-url", vertex.base_url,
            "--huggingface-base-url", hf.base_url,
            "--google-key-file", str(key_file),
            "--google-project", PROJECT,
            "--google-region", "us-central1",
            "--model-timeout", "1",
            "--log-level", "debug",
        ],
        env={"PGMP_TEST_ERRORS_OPENAI_KEY": OPENAI_KEY, "PGMP_TEST_ERRORS_HF_TOKEN": HF_TOKEN},
        superuser_password=database.password,
    ).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def dbname(database) -> Iterator[str]:
    with database.scratch("errors") as name:
        with psycopg.connect(database.direct_dsn(database=name), autocommit=True) as c:
            c.execute("CREATE EXTENSION google_ml_integration")
            c.execute("CALL google_ml.create_sm_secret('openai-key', 'env:PGMP_TEST_ERRORS_OPENAI_KEY')")
            c.execute(
                "CALL google_ml.create_model(model_id => 'oai', model_provider => 'open_ai', "
                "model_qualified_name => 'text-embedding-3-small', model_type => 'text_embedding', "
                "model_auth_type => 'secret_manager', model_auth_id => 'openai-key')"
            )
            c.execute(
                "CALL google_ml.create_model(model_id => 'vtx', model_provider => 'google', "
                "model_qualified_name => 'text-embedding-005', model_type => 'text_embedding', "
                "model_auth_type => 'alloydb_service_agent_iam')"
            )
            c.execute("CALL google_ml.create_sm_secret('hf-key', 'env:PGMP_TEST_ERRORS_HF_TOKEN')")
            c.execute(
                "CALL google_ml.create_model(model_id => 'hfm', model_provider => 'hugging_face', "
                "model_request_url => %s, model_type => 'text_embedding', "
                "model_auth_type => 'secret_manager', model_auth_id => 'hf-key')",
                (f"https://router.huggingface.co/hf-inference/models/{MINILM}/pipeline/feature-extraction",),
            )
        yield name


@pytest.fixture(params=["openai", "vertex", "hugging_face"])
def target(request, fakes) -> Target:
    openai, _, vertex, hf = fakes
    if request.param == "openai":
        return Target(
            "oai", "OpenAI", openai, OPENAI_KEY, 1536,
            lambda text: FakeOpenAI.expected_embedding(text, "text-embedding-3-small"),
            missing="no data array", short="1 embeddings for 2 inputs",
        )
    if request.param == "vertex":
        return Target(
            "vtx", "Vertex AI", vertex, VERTEX_TOKEN, 768,
            lambda text: FakeVertex.expected_embedding(text, "text-embedding-005"),
            missing="no predictions array", short="1 predictions for 2 instances",
        )
    return Target(
        "hfm", "Hugging Face", hf, HF_TOKEN, 384,
        lambda text: hf.expected_embedding(text, MINILM),
        missing="not an array of embeddings", short="1 embeddings for 2 inputs",
    )


@pytest.fixture
def conn(error_proxy, dbname, fakes) -> Iterator[psycopg.Connection]:
    for fake in fakes:
        fake.reset()
        fake.latency = 0
    with psycopg.connect(error_proxy.dsn(database=dbname), autocommit=True) as c:
        yield c


def close_to(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def embed_sql(target: Target) -> str:
    return f"SELECT google_ml.embedding('{target.model_id}', %s)"


def assert_still_usable(conn: psycopg.Connection, target: Target) -> None:
    """The session answers SQL, and the model answers again (no slot or connection leaked)."""
    assert conn.execute("SELECT 1").fetchone() == (1,)
    before = target.fake.request_count
    text = f"after the failure {uuid.uuid4().hex[:6]}"
    value = conn.execute(embed_sql(target), (text,)).fetchone()[0]
    assert close_to(value, target.expected(text))
    assert target.fake.request_count == before + 1


def failure_of(conn: psycopg.Connection, sql: str, params: tuple = ()) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as failure:
        conn.execute(sql, params)
    return failure.value


# ---------------------------------------------------------------------- timeouts


def test_provider_hanging_past_the_model_timeout(conn, target):
    target.fake.hang_next(ATTEMPTS)
    error = failure_of(conn, embed_sql(target), ("hang",))
    assert isinstance(error, psycopg.errors.QueryCanceled)  # 57014, as for statement_timeout
    assert error.diag.sqlstate == "57014"
    message = str(error)
    assert f'model "{target.model_id}": {target.label} did not answer within 1 s' in message
    assert f"gave up after {ATTEMPTS} attempts" in message
    assert target.fake.request_count == ATTEMPTS  # each attempt was abandoned, then retried
    assert_still_usable(conn, target)


def test_one_hung_attempt_is_retried(conn, target):
    target.fake.hang_next(1)
    value = conn.execute(embed_sql(target), ("hung once",)).fetchone()[0]
    assert close_to(value, target.expected("hung once"))
    assert target.fake.request_count == 2


def test_statement_timeout_bounds_the_model_call(conn, fakes):
    openai = fakes[0]
    conn.execute("SET statement_timeout = '1500ms'")
    openai.hang_next(ATTEMPTS)
    error = failure_of(conn, "SELECT google_ml.embedding('oai', 'bounded')")
    assert error.diag.sqlstate == "57014"
    assert "statement timeout" in str(error)
    # 1.5 s leave room for one 1 s attempt and the start of a second, not for five.
    assert openai.request_count <= 2
    conn.execute("RESET statement_timeout")
    openai.reset()
    value = conn.execute("SELECT google_ml.embedding('oai', 'in time')").fetchone()[0]
    assert close_to(value, FakeOpenAI.expected_embedding("in time", "text-embedding-3-small"))


# ---------------------------------------------------------------------- 200s of the wrong shape


@pytest.mark.parametrize("shape", ["missing", "short", "dims", "html", "malformed"])
def test_wrong_answer_is_a_clear_error_and_not_retried(conn, target, shape):
    if shape == "malformed":
        target.fake.bad_body_next(1, "malformed")  # JSON cut in half
    else:
        target.fake.bad_shape_next(1, shape)
    error = failure_of(
        conn,
        f"SELECT google_ml.embedding('{target.model_id}', 'first'), "
        f"google_ml.embedding('{target.model_id}', 'second')",
    )
    assert error.diag.sqlstate == "38000"
    expected = {
        "missing": target.missing,
        "short": target.short,
        "dims": f"embeddings of different dimensions ({target.dim} and {target.dim - 1} values)",
        "html": "an HTML page, not JSON: 'Sign in to the network'",
        "malformed": "not JSON: ",
    }[shape]
    assert f'model "{target.model_id}": unexpected response from {target.label}: {expected}' in str(error)
    assert target.fake.request_count == 1  # both texts in one request, not retried
    assert_still_usable(conn, target)


def test_vector_of_another_dimension_fails_the_vector_cast(conn, target, pgvector):
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    target.fake.bad_shape_next(1, "dims")
    error = failure_of(conn, f"SELECT google_ml.embedding('{target.model_id}', 'odd')::vector({target.dim})")
    # pgvector's own check, raised by the server for the statement as written
    assert error.diag.sqlstate == "22000"
    assert f"expected {target.dim} dimensions, not {target.dim - 1}" in str(error)
    assert_still_usable(conn, target)


@pytest.mark.parametrize("statement", ["update", "insert_select"])
def test_column_of_another_dimension_changes_nothing(conn, target, pgvector, statement):
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    table = f"dims_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text, emb vector(3))")
    conn.execute(f"INSERT INTO {table} SELECT i, 'dim doc ' || i FROM generate_series(1, 20) i")
    if statement == "update":  # answered through a read-only arguments query
        sql = f"UPDATE {table} SET emb = google_ml.embedding('{target.model_id}', body)::vector"
    else:  # answered through a collect run
        conn.execute(f"CREATE TABLE {table}_copy (LIKE {table})")
        sql = (
            f"INSERT INTO {table}_copy SELECT id, body, "
            f"google_ml.embedding('{target.model_id}', body)::vector FROM {table}"
        )
    error = failure_of(conn, sql)
    assert error.diag.sqlstate == "22000"
    assert f"expected 3 dimensions, not {target.dim}" in str(error)
    assert conn.execute(f"SELECT count(*) FROM {table} WHERE emb IS NOT NULL").fetchone() == (0,)
    if statement == "insert_select":
        assert conn.execute(f"SELECT count(*) FROM {table}_copy").fetchone() == (0,)
    assert_still_usable(conn, target)


# ---------------------------------------------------------------------- HTTP errors


def test_rate_limited_requests_are_retried_until_answered(conn, target):
    target.fake.fail_next(2, 429)  # the provider's own 429 body, no Retry-After: backoff
    value = conn.execute(embed_sql(target), ("after two 429s",)).fetchone()[0]
    assert close_to(value, target.expected("after two 429s"))
    assert target.fake.request_count == 3


def test_retry_after_beyond_the_proxys_patience_fails_at_once(conn, target):
    target.fake.fail_next(1, 429, retry_after=3600)
    error = failure_of(conn, embed_sql(target), ("come back in an hour",))
    assert error.diag.sqlstate == "38000"
    message = str(error)
    assert f"{target.label} returned HTTP 429" in message
    assert "retry after 3600 s" in message  # says why it did not wait
    assert target.fake.request_count == 1
    assert_still_usable(conn, target)


def test_openai_exhausted_quota_is_not_retried(conn, fakes):
    openai = fakes[0]
    quota = (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    openai.fail_next(
        1,
        429,
        body={"error": {"message": quota, "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}},
    )
    error = failure_of(conn, "SELECT google_ml.embedding('oai', 'no money')")
    assert error.diag.sqlstate == "38000"
    assert f"OpenAI returned HTTP 429: {quota}" in str(error)
    assert openai.request_count == 1


def test_server_error_gives_the_providers_message_without_the_secret(conn, target, error_proxy):
    echoed = f"upstream failure while serving Bearer {target.secret}"
    target.fake.fail_next(ATTEMPTS, 500, retry_after=0, body=target.error_body(echoed))
    error = failure_of(conn, embed_sql(target), ("boom",))
    assert error.diag.sqlstate == "38000"
    message = str(error)
    assert f'model "{target.model_id}": {target.label} returned HTTP 500: ' in message
    assert "upstream failure while serving ***" in message  # "Bearer <key>" is secret too
    assert f"(gave up after {ATTEMPTS} attempts)" in message
    assert target.fake.request_count == ATTEMPTS
    for field in (message, error.diag.message_detail or "", error.diag.message_hint or ""):
        assert target.secret not in field
    # The proxy logged the failure and each retry (debug level), scrubbed too.
    assert wait_for_log(error_proxy, "upstream failure while serving ***")
    assert target.secret not in error_proxy.log_text()
    assert_still_usable(conn, target)


def test_gateway_error_page_is_reported_readably(conn, target):
    page = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
    target.fake.fail_next(ATTEMPTS, 502, retry_after=0, body=page)
    error = failure_of(conn, embed_sql(target), ("through a broken gateway",))
    assert error.diag.sqlstate == "38000"
    message = str(error)
    assert f"{target.label} returned HTTP 502: 502 Bad Gateway" in message
    assert "<html>" not in message
    assert target.fake.request_count == ATTEMPTS
    assert_still_usable(conn, target)


def wait_for_log(proxy: ProxyProcess, text: str) -> bool:
    """The proxy's stderr is read by a thread: wait for a line to arrive."""
    return wait_until(lambda: text in proxy.log_text(), timeout=5)
