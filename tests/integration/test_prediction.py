"""google_ml.embedding / predict_row through the proxy, answered by a fake OpenAI server.

The proxy pre-warms the session's results store before forwarding: constant calls are
evaluated and answered in one round trip; row-dependent ones (UPDATE ... SET emb =
embedding('m', body)) go through a collect run, then one batched request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import asyncpg
import psutil
import psycopg
import pytest

from proxy.embedded import bundled_bin_dir
from tests.fakes.openai import FakeOpenAI
from tests.support import ProxyProcess, wait_until

KEY = "sk-test-openai"
MODEL = "emb"


@pytest.fixture(scope="module")
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def model_proxy(database, openai) -> Iterator[ProxyProcess]:
    p = ProxyProcess(
        ["--upstream", database.upstream, "--openai-base-url", openai.base_url, "--model-timeout", "5"],
        env={"PGMP_TEST_OPENAI_KEY": KEY},
        superuser_password=database.password,
    ).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def dbname(database) -> Iterator[str]:
    with database.scratch("predict") as name:
        with psycopg.connect(database.direct_dsn(database=name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION google_ml_integration")
            conn.execute("CALL google_ml.create_sm_secret('openai-key', 'env:PGMP_TEST_OPENAI_KEY')")
            conn.execute(
                "CALL google_ml.create_model(model_id => %s, model_provider => 'open_ai', "
                "model_qualified_name => 'text-embedding-3-small', model_auth_type => 'secret_manager', "
                "model_auth_id => 'openai-key')",
                (MODEL,),
            )
            conn.execute(
                "CALL google_ml.create_model(model_id => 'nokey', model_provider => 'open_ai', "
                "model_qualified_name => 'text-embedding-3-small')"
            )
        yield name


@pytest.fixture
def conn(model_proxy, dbname, openai) -> Iterator[psycopg.Connection]:
    openai.reset()
    openai.latency = 0
    with psycopg.connect(model_proxy.dsn(database=dbname), autocommit=True) as c:
        yield c


def expected(text: str) -> list[float]:
    return FakeOpenAI.expected_embedding(text, "text-embedding-3-small")


def close_to(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def test_constant_call_simple_and_extended_protocol(conn, model_proxy, dbname, openai):
    value = conn.execute("SELECT google_ml.embedding('emb', 'AlloyDB is ...')").fetchone()[0]
    assert close_to(value, expected("AlloyDB is ..."))
    named = conn.execute(
        "SELECT embedding(model_id => 'emb', content => 'AlloyDB is ...')"
    ).fetchone()[0]
    assert named == value
    request = openai.requests[0]
    assert request.json["model"] == "text-embedding-3-small"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    # The simple protocol too. (psql in a subprocess: libpq's blocking get_result in this
    # process would hold the GIL and starve the fake server's thread.)
    out = subprocess.run(
        [str(bundled_bin_dir() / "psql"), "-X", "-At", "-d", model_proxy.dsn(database=dbname),
         "-c", "SELECT array_length(google_ml.embedding('emb', 'simple'), 1)"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.strip() == "1536", out.stderr


def test_same_input_is_sent_once_per_statement(conn, openai):
    row = conn.execute(
        "SELECT google_ml.embedding('emb', 'same') = google_ml.embedding('emb', 'same'), "
        "google_ml.embedding('emb', 'other') IS NOT NULL"
    ).fetchone()
    assert row == (True, True)
    assert openai.request_count == 1
    assert sorted(openai.requests[0].json["input"]) == ["other", "same"]


async def test_asyncpg_and_pgvector_cast(model_proxy, dbname, pgvector):
    conn = await asyncpg.connect(model_proxy.dsn(database=dbname))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        text = await conn.fetchval("SELECT embedding('emb', 'q')::vector::text")
        assert text.startswith("[") and text.count(",") == 1535
    finally:
        await conn.close()


def test_update_of_many_rows_is_one_batched_call(conn, openai, pgvector):
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    table = f"docs_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text, emb vector(1536))")
    conn.execute(f"INSERT INTO {table} SELECT i, 'doc ' || (i % 150) FROM generate_series(1, 300) i")
    cur = conn.execute(f"UPDATE {table} SET emb = google_ml.embedding('emb', body)::vector WHERE emb IS NULL")
    assert cur.rowcount == 300
    assert conn.execute(f"SELECT count(*) FROM {table} WHERE emb IS NULL").fetchone() == (0,)
    got = conn.execute(f"SELECT emb::text FROM {table} WHERE id = 7").fetchone()[0]
    assert close_to([float(x) for x in got.strip("[]").split(",")], expected("doc 7"))
    # 150 distinct bodies: the first collect run meets vector(1536) with an unknown dimension,
    # answers the one call it saw, learns the dimension, and collects the rest: 2 requests.
    assert openai.request_count <= 2
    assert sum(len(r.json["input"]) for r in openai.requests) == 150


def test_hnsw_index_used_for_nearest_neighbours(conn, pgvector):
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    table = f"items_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, emb vector(3))")
    conn.execute(
        f"INSERT INTO {table} SELECT i, ARRAY[sin(i), cos(i), 1]::vector FROM generate_series(1, 2000) i"
    )
    conn.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (emb vector_cosine_ops)")
    conn.execute(f"ANALYZE {table}")
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            f"EXPLAIN SELECT id FROM {table} "
            "ORDER BY emb <=> (google_ml.embedding('emb', 'query')::real[])[1:3]::vector LIMIT 10"
        )
    )
    assert f"Index Scan using {table}_hnsw" in plan, plan


def test_unknown_model_is_an_error_and_changes_nothing(conn, model_proxy, dbname):
    with pytest.raises(psycopg.errors.UndefinedObject, match="Model does not exist for model_id: nope"):
        conn.execute("SELECT google_ml.embedding('nope', 'x')")
    with psycopg.connect(model_proxy.dsn(database=dbname)) as tx:  # in a transaction block
        tx.execute("SELECT 1")
        with pytest.raises(psycopg.errors.UndefinedObject):
            tx.execute("SELECT google_ml.embedding('nope', 'x')")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            tx.execute("SELECT 1")
        tx.rollback()
        assert tx.execute("SELECT 2").fetchone() == (2,)


def test_provider_error_is_reported_with_its_message_and_no_secret(conn, openai):
    openai.fail_next(20, status=500)
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.embedding('emb', 'boom')")
    assert failure.value.diag.sqlstate == "38000"
    assert "500" in str(failure.value)
    assert KEY not in str(failure.value)
    openai.reset()


def test_missing_credentials_give_the_providers_401(conn):
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.embedding('nokey', 'x')")
    assert "401" in str(failure.value)


def test_rate_limited_then_answered(conn, openai):
    openai.fail_next(1, status=429, retry_after=0)
    value = conn.execute("SELECT google_ml.embedding('emb', 'after a 429')").fetchone()[0]
    assert close_to(value, expected("after a 429"))
    assert openai.request_count == 2


def test_atomic_update_when_the_provider_fails(conn, openai):
    table = f"atomic_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int, body text, emb real[])")
    conn.execute(f"INSERT INTO {table} SELECT i, 'atomic ' || i FROM generate_series(1, 50) i")
    openai.fail_next(50, status=500)
    with pytest.raises(psycopg.Error):
        conn.execute(f"UPDATE {table} SET emb = google_ml.embedding('emb', body)")
    assert conn.execute(f"SELECT count(*) FROM {table} WHERE emb IS NOT NULL").fetchone() == (0,)
    openai.reset()


def test_model_support_off(conn):
    conn.execute("SET google_ml_integration.enable_model_support = off")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="model support is disabled"):
        conn.execute("SELECT google_ml.embedding('emb', 'x')")
    conn.execute("RESET google_ml_integration.enable_model_support")


def test_cancel_during_a_slow_model_call(conn, openai):
    openai.latency = 30
    canceller = threading.Timer(0.5, conn.cancel)  # the client's own cancel, mid-call
    canceller.start()
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT google_ml.embedding('emb', 'slow')")
    finally:
        canceller.cancel()
        openai.latency = 0
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_client_disconnect_mid_call_leaves_no_provider_call(model_proxy, dbname, openai):
    openai.reset()
    openai.latency = 30
    code = (
        "import psycopg, sys\n"
        "c = psycopg.connect(sys.argv[1], autocommit=True)\n"
        "c.execute(\"SELECT google_ml.embedding('emb', 'orphan?')\")\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, model_proxy.dsn(database=dbname)])
    port = int(openai.base_url.rsplit(":", 1)[1].split("/")[0])

    def proxy_calls_in_flight() -> int:
        """The proxy's open TCP connections to the fake provider."""
        assert model_proxy.proc is not None
        return sum(
            1
            for c in psutil.Process(model_proxy.proc.pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )

    try:
        assert wait_until(lambda: openai.request_count == 1, timeout=20)
        assert proxy_calls_in_flight() >= 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        # The proxy cancels the call: its connection to the provider is closed.
        assert wait_until(lambda: proxy_calls_in_flight() == 0, timeout=10)
    finally:
        openai.latency = 0
        if child.poll() is None:
            child.kill()


def test_bind_parameters_psycopg_unnamed_statement(conn):
    # psycopg: Parse("") + Bind + Describe + Execute + Sync in one go.
    value = conn.execute("SELECT google_ml.embedding('emb', %s)", ("bound text",)).fetchone()[0]
    assert close_to(value, expected("bound text"))
    value = conn.execute("SELECT google_ml.embedding(%s, %s)", ("emb", "two params")).fetchone()[0]
    assert close_to(value, expected("two params"))
    with pytest.raises(psycopg.errors.UndefinedObject, match="Model does not exist for model_id: nope"):
        conn.execute("SELECT google_ml.embedding(%s, 'x')", ("nope",))
    assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_bind_parameters_asyncpg_named_statement_reused(model_proxy, dbname, openai):
    conn = await asyncpg.connect(model_proxy.dsn(database=dbname))
    try:
        for text in ("first", "second", "first"):  # asyncpg caches the prepared statement
            value = await conn.fetchval("SELECT google_ml.embedding('emb', $1)", text)
            assert close_to(list(value), expected(text))
        statement = await conn.prepare("SELECT google_ml.embedding($1, $2) IS NOT NULL")
        assert await statement.fetchval("emb", "prepared once") is True
        assert await conn.fetchval("SELECT $1::int + 1", 1) == 2
    finally:
        await conn.close()


def test_bind_parameters_row_dependent_update(conn, openai):
    table = f"bound_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int, body text, emb real[])")
    conn.execute(f"INSERT INTO {table} SELECT i, 'bound ' || i FROM generate_series(1, 20) i")
    cur = conn.execute(
        f"UPDATE {table} SET emb = google_ml.embedding(%s, body) WHERE id <= %s", ("emb", 10)
    )
    assert cur.rowcount == 10
    assert conn.execute(f"SELECT count(*) FROM {table} WHERE emb IS NOT NULL").fetchone() == (10,)
