"""Model calls hidden where the client's statement does not show them (SPEC §4).

A STORED generated column, a trigger, a view or a user function calls `embedding()`; the
client's statement names only the table, the view or the function. The proxy learns what
hides calls from the catalog (proxy/sql/hiding.py), runs a collect run for such statements
and forwards them once every call is answered, against a fake OpenAI server.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from proxy.embedded import bundled_bin_dir
from tests.fakes.openai import FakeOpenAI
from tests.support import ProxyProcess

KEY = "sk-test-hidden"


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


@pytest.fixture
def dbname(database) -> Iterator[str]:
    """A database of its own per test: each test's DDL is what the proxy must discover."""
    with database.scratch("hidden") as name:
        with psycopg.connect(database.direct_dsn(database=name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION google_ml_integration")
            conn.execute("CALL google_ml.create_sm_secret('openai-key', 'env:PGMP_TEST_OPENAI_KEY')")
            conn.execute(
                "CALL google_ml.create_model(model_id => 'emb', model_provider => 'open_ai', "
                "model_qualified_name => 'text-embedding-3-small', model_auth_type => 'secret_manager', "
                "model_auth_id => 'openai-key')"
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


def close_to(a, b) -> bool:  # type: ignore[no-untyped-def]
    return a is not None and len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def inputs_sent(openai: FakeOpenAI) -> list[str]:
    return [text for r in openai.requests for text in r.json["input"]]


def psql(proxy: ProxyProcess, dbname: str, sql: str) -> subprocess.CompletedProcess[str]:
    """The simple protocol, from a subprocess (libpq blocking in this process would starve the fake)."""
    return subprocess.run(
        [str(bundled_bin_dir() / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d",
         proxy.dsn(database=dbname), "-c", sql],
        capture_output=True, text=True, timeout=60,
    )


def test_generated_column_filled_by_a_plain_insert(conn, model_proxy, dbname, openai):
    conn.execute(
        "CREATE TABLE docs (id serial, content text, "
        "emb real[] GENERATED ALWAYS AS (embedding('emb', content)) STORED)"
    )
    out = psql(model_proxy, dbname, "INSERT INTO docs (content) VALUES ('alpha'), ('beta'), ('alpha')")
    assert out.returncode == 0 and out.stdout.strip() == "INSERT 0 3", out.stderr
    rows = conn.execute("SELECT content, emb FROM docs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["alpha", "beta", "alpha"]
    assert all(close_to(emb, expected(content)) for content, emb in rows)
    assert len(openai.requests) == 1  # the collect run found both; one batched request
    assert sorted(inputs_sent(openai)) == ["alpha", "beta"]
    # Reading the table calls nothing.
    openai.reset()
    assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 3
    assert openai.requests == []


def test_generated_vector_column_learns_the_dimension(conn, openai, pgvector):
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute(
        "CREATE TABLE items (content text, "
        "emb vector(1536) GENERATED ALWAYS AS (embedding('emb', content)::vector) STORED)"
    )
    conn.execute("INSERT INTO items (content) VALUES (%s), (%s)", ("one", "two"))
    rows = conn.execute("SELECT content, emb::real[] FROM items ORDER BY content").fetchall()
    assert [r[0] for r in rows] == ["one", "two"]
    assert all(close_to(emb, expected(content)) for content, emb in rows)


def test_bind_parameters_into_a_generated_column(conn, openai):
    conn.execute(
        "CREATE TABLE docs (content text, emb real[] GENERATED ALWAYS AS (embedding('emb', content)) STORED)"
    )
    for text in ("first", "second"):
        conn.execute("INSERT INTO docs (content) VALUES (%s)", (text,))
    rows = dict(conn.execute("SELECT content, emb FROM docs").fetchall())
    assert close_to(rows["first"], expected("first")) and close_to(rows["second"], expected("second"))


async def test_asyncpg_prepared_insert_reused(model_proxy, dbname, openai, conn):
    conn.execute(
        "CREATE TABLE docs (content text, emb real[] GENERATED ALWAYS AS (embedding('emb', content)) STORED)"
    )
    client = await asyncpg.connect(model_proxy.dsn(database=dbname))
    try:
        for text in ("a1", "a2", "a1"):  # asyncpg prepares once, then sends Bind/Execute only
            await client.execute("INSERT INTO docs (content) VALUES ($1)", text)
        async with client.transaction():
            await client.executemany("INSERT INTO docs (content) VALUES ($1)", [("m1",), ("m2",)])
        rows = await client.fetch("SELECT content, emb FROM docs")
    finally:
        await client.close()
    assert sorted(r["content"] for r in rows) == ["a1", "a1", "a2", "m1", "m2"]
    assert all(close_to(list(r["emb"]), expected(r["content"])) for r in rows)


async def test_asyncpg_executemany_outside_a_transaction(model_proxy, dbname, openai, conn):
    """A pipeline is one implicit transaction: the proxy reads it to its Sync and pre-warms
    every row before any runs (one batched request), so it stays all-or-nothing."""
    conn.execute(
        "CREATE TABLE docs (content text CHECK (content <> 'bad'), "
        "emb real[] GENERATED ALWAYS AS (embedding('emb', content)) STORED)"
    )
    client = await asyncpg.connect(model_proxy.dsn(database=dbname))
    try:
        openai.reset()
        await client.executemany("INSERT INTO docs (content) VALUES ($1)", [(f"x{n}",) for n in range(40)])
        assert len(openai.requests) == 1 and len(inputs_sent(openai)) == 40
        with pytest.raises(asyncpg.CheckViolationError):
            await client.executemany("INSERT INTO docs (content) VALUES ($1)", [("y1",), ("y2",), ("bad",)])
        rows = await client.fetch("SELECT content, emb FROM docs")
    finally:
        await client.close()
    assert sorted(r["content"] for r in rows) == sorted(f"x{n}" for n in range(40))  # no y1, y2
    assert all(close_to(list(r["emb"]), expected(r["content"])) for r in rows)


async def test_asyncpg_executemany_visible_calls_batched_and_atomic(model_proxy, dbname, openai, conn):
    conn.execute("CREATE TABLE t (x text CHECK (x <> 'bad'), e real[])")
    client = await asyncpg.connect(model_proxy.dsn(database=dbname))
    try:
        openai.reset()
        insert = "INSERT INTO t VALUES ($1, google_ml.embedding('emb', $1))"
        await client.executemany(insert, [(f"v{n}",) for n in range(25)])
        assert len(openai.requests) == 1
        with pytest.raises(asyncpg.CheckViolationError):
            await client.executemany(insert, [("w1",), ("w2",), ("bad",)])
        assert await client.fetchval("SELECT count(*) FROM t") == 25  # w1, w2 rolled back with 'bad'
    finally:
        await client.close()


def test_trigger_that_embeds(conn, model_proxy, dbname, openai):
    conn.execute("CREATE TABLE notes (id int, body text, embedding real[])")
    conn.execute(
        "CREATE FUNCTION notes_embed() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.embedding := google_ml.embedding('emb', NEW.body); RETURN NEW; END $$"
    )
    conn.execute("CREATE TRIGGER embed BEFORE INSERT OR UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION notes_embed()")
    conn.execute("INSERT INTO notes VALUES (1, 'n1'), (2, 'n2')")
    out = psql(model_proxy, dbname, "UPDATE notes SET body = body || '!'")
    assert out.returncode == 0, out.stderr
    rows = conn.execute("SELECT body, embedding FROM notes ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["n1!", "n2!"]
    assert all(close_to(emb, expected(body)) for body, emb in rows)


def test_view_that_embeds(conn, openai):
    conn.execute("CREATE TABLE src (id int, body text)")
    conn.execute("INSERT INTO src SELECT g, 'row ' || g FROM generate_series(1, 30) g")
    conn.execute("CREATE VIEW embedded AS SELECT id, google_ml.embedding('emb', body) AS e FROM src")
    conn.execute("CREATE VIEW over_view AS SELECT * FROM embedded WHERE id <= 10")
    openai.reset()
    rows = conn.execute("SELECT id, e FROM embedded ORDER BY id").fetchall()
    assert len(rows) == 30 and all(close_to(e, expected(f"row {i}")) for i, e in rows)
    assert len(openai.requests) == 1  # 30 rows, one batched request
    rows = conn.execute("SELECT id, e FROM over_view ORDER BY id").fetchall()
    assert [i for i, _ in rows] == list(range(1, 11))
    assert all(close_to(e, expected(f"row {i}")) for i, e in rows)


def test_user_functions_that_embed(conn, openai):
    conn.execute(
        "CREATE FUNCTION embed_text(t text) RETURNS real[] LANGUAGE plpgsql AS $$ "
        "BEGIN RETURN embedding('emb', upper(t)); END $$"
    )
    conn.execute("CREATE FUNCTION dims(t text) RETURNS int LANGUAGE sql AS $$ SELECT cardinality(embed_text(t)) $$")
    assert close_to(conn.execute("SELECT embed_text(%s)", ("hi",)).fetchone()[0], expected("HI"))
    assert conn.execute("SELECT dims('deep')").fetchone()[0] == 1536
    assert "DEEP" in inputs_sent(openai)


def test_ddl_made_elsewhere_simple_query_is_run_again(conn, database, model_proxy, dbname, openai):
    """DDL that bypasses the proxy: the statement misses (PX001) on a call nobody foresaw. A
    simple Query outside a transaction, none of whose reply reached the client, is run again
    after a collect run: the client sees only the success."""
    conn.execute("SELECT 1")  # the proxy has read this database's catalog
    with psycopg.connect(database.direct_dsn(database=dbname), autocommit=True) as direct:
        direct.execute(
            "CREATE TABLE late (content text, emb real[] GENERATED ALWAYS AS (embedding('emb', content)) STORED)"
        )
    out = psql(model_proxy, dbname, "INSERT INTO late (content) VALUES ('x'), ('y')")
    assert out.returncode == 0 and out.stdout.strip() == "INSERT 0 2", out.stderr
    rows = dict(conn.execute("SELECT content, emb FROM late").fetchall())
    assert close_to(rows["x"], expected("x")) and close_to(rows["y"], expected("y"))


def test_call_hidden_from_the_catalog_simple_query_is_run_again(conn, model_proxy, dbname):
    """Dynamic SQL hides the call even from function bodies: found by the retry's collect run."""
    conn.execute(
        "CREATE FUNCTION sneaky(t text) RETURNS real[] LANGUAGE plpgsql AS $$ DECLARE r real[]; "
        "BEGIN EXECUTE 'SELECT ' || 'embed' || 'ding($1, $2)' INTO r USING 'emb', t; RETURN r; END $$"
    )
    out = psql(model_proxy, dbname, "SELECT cardinality(sneaky('dynamic'))")
    assert out.returncode == 0 and out.stdout.strip() == "1536", out.stderr
    # In a transaction the miss cannot be retried: the client gets PX001, with its hint.
    out = psql(model_proxy, dbname, "BEGIN; SELECT cardinality(sneaky('in a transaction')); COMMIT")
    assert out.returncode != 0 and "no result for this call" in out.stderr
    # Nor in a Query of several statements (one may have committed before the miss).
    out = psql(model_proxy, dbname, "SELECT 1; SELECT cardinality(sneaky('two statements'))")
    assert out.returncode != 0 and "no result for this call" in out.stderr


def test_ddl_made_elsewhere_extended_protocol_works_after_one_miss(conn, database, dbname):
    """Extended protocol: the miss is the client's error, and the proxy looks at the catalog again."""
    conn.execute("SELECT 1")
    with psycopg.connect(database.direct_dsn(database=dbname), autocommit=True) as direct:
        direct.execute(
            "CREATE TABLE late (content text, emb real[] GENERATED ALWAYS AS (embedding('emb', content)) STORED)"
        )
    with pytest.raises(psycopg.Error) as miss:
        conn.execute("INSERT INTO late (content) VALUES (%s)", ("x",))
    assert miss.value.sqlstate == "PX001"
    conn.execute("INSERT INTO late (content) VALUES (%s)", ("x",))
    assert close_to(conn.execute("SELECT emb FROM late").fetchone()[0], expected("x"))


def test_inside_a_transaction_rolled_back_and_committed(conn):
    conn.execute(
        "CREATE TABLE docs (content text, emb real[] GENERATED ALWAYS AS (embedding('emb', content)) STORED)"
    )
    with conn.transaction(force_rollback=True):
        conn.execute("INSERT INTO docs (content) VALUES ('gone')")
        assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 1
    with conn.transaction():
        conn.execute("INSERT INTO docs (content) VALUES ('kept')")
        conn.execute("INSERT INTO docs (content) VALUES ('kept too')")
    rows = dict(conn.execute("SELECT content, emb FROM docs").fetchall())
    assert set(rows) == {"kept", "kept too"}
    assert close_to(rows["kept too"], expected("kept too"))


def test_unknown_model_in_a_hidden_call_changes_nothing(conn):
    conn.execute(
        "CREATE TABLE docs (content text, emb real[] GENERATED ALWAYS AS (embedding('nope', content)) STORED)"
    )
    with pytest.raises(psycopg.errors.UndefinedObject, match="nope"):
        conn.execute("INSERT INTO docs (content) VALUES ('a'), ('b')")
    assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 0


def test_provider_failure_in_a_trigger_changes_nothing(conn, openai):
    conn.execute("CREATE TABLE notes (body text, embedding real[])")
    conn.execute(
        "CREATE FUNCTION notes_embed() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.embedding := embedding('emb', NEW.body); RETURN NEW; END $$"
    )
    conn.execute("CREATE TRIGGER embed BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION notes_embed()")
    openai.fail_next(20, status=500)
    with pytest.raises(psycopg.errors.ExternalRoutineException, match="500"):
        conn.execute("INSERT INTO notes SELECT 'b' || g FROM generate_series(1, 20) g")
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 0


def test_copy_from_stdin_into_a_generated_column_is_refused_clearly(conn, model_proxy, dbname):
    conn.execute(
        "CREATE TABLE docs (content text, emb real[] GENERATED ALWAYS AS (embedding('emb', content)) STORED)"
    )
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="COPY FROM STDIN"):
        with conn.cursor().copy("COPY docs (content) FROM STDIN") as copy:
            copy.write_row(("x",))
    assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 0


def test_statement_timeout_bounds_the_model_calls(conn, openai):
    """The fake answers in 2 s, within --model-timeout (5 s) but past statement_timeout."""
    openai.latency = 2
    conn.execute("SET statement_timeout = '300ms'")
    with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
        conn.execute("SELECT google_ml.embedding('emb', 'slow')")
    openai.latency = 0
    conn.execute("SET statement_timeout = 0")
    assert close_to(conn.execute("SELECT google_ml.embedding('emb', 'slow')").fetchone()[0], expected("slow"))


def test_catalog_read_inside_a_client_transaction_leaves_it_intact(model_proxy, dbname, openai):
    """psycopg's default: every statement inside BEGIN. DDL in the transaction makes the proxy
    read the catalog again there (in a savepoint); the transaction goes on, sees its own new
    trigger, and commits."""
    with psycopg.connect(model_proxy.dsn(database=dbname)) as conn:  # not autocommit
        conn.execute("CREATE TABLE notes (body text, embedding real[])")
        conn.execute(
            "CREATE FUNCTION notes_embed() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN NEW.embedding := embedding('emb', NEW.body); RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER embed BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION notes_embed()")
        conn.execute("INSERT INTO notes VALUES ('in a transaction')")
        conn.commit()
        row = conn.execute("SELECT body, embedding FROM notes").fetchone()
    assert row[0] == "in a transaction" and close_to(row[1], expected("in a transaction"))
