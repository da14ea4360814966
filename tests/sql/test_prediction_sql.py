"""The prediction functions in SQL: lookups in the session results store, misses, collect mode.

Straight to the server: these tests fill the results store themselves, the way the proxy
will, and check what the functions do with it. They also check the properties the design
relies on: IMMUTABLE (a STORED generated column can call them, and a prepared ORDER BY
emb <=> embedding('m', $1) is folded at plan time so pgvector's HNSW index is used) and
PARALLEL RESTRICTED.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

EXT = "google_ml_integration"


@pytest.fixture(scope="module")
def dbname(database) -> Iterator[str]:
    name = f"pred_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database.direct_dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(database.direct_dsn(database=name), autocommit=True) as conn:
        conn.execute(f"CREATE EXTENSION {EXT}")
    yield name
    with psycopg.connect(database.direct_dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def conn(database, dbname) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database.direct_dsn(database=dbname), autocommit=True) as c:
        yield c


def store(conn: psycopg.Connection, fn: str, model: str, text: str, value: object) -> None:
    """What the proxy does before forwarding a statement: put the answer in the store."""
    conn.execute("SELECT google_ml._results_store()")
    column = "embedding" if fn == "embedding" else "response"
    conn.execute(
        f"INSERT INTO pg_temp.google_ml_results (key, {column}) "
        "VALUES (google_ml._call_key(%s, %s, %s), %s) ON CONFLICT (key) DO NOTHING",
        (fn, model, text, value if fn == "embedding" else json.dumps(value)),
    )


def test_declared_immutable_and_parallel_restricted(conn):
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.provolatile, p.proparallel FROM pg_proc p "
        "WHERE p.oid IN ('google_ml.embedding(varchar,text)'::regprocedure, "
        "'google_ml.predict_row(varchar,json)'::regprocedure, 'public.embedding(varchar,text)'::regprocedure, "
        "'public.ml_predict_row(varchar,json)'::regprocedure)"
    ).fetchall()
    assert len(rows) == 4
    assert {(v, p) for _, v, p in rows} == {("i", "r")}


def test_miss_outside_the_proxy_is_a_clear_error_with_the_call(conn):
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.embedding('text-embedding-005', 'AlloyDB is ...')")
    diag = failure.value.diag
    assert diag.sqlstate == "PX001"
    assert 'no result for this call of model "text-embedding-005"' in diag.message_primary
    assert json.loads(diag.message_detail) == {
        "fn": "embedding", "model_id": "text-embedding-005", "input": "AlloyDB is ...",
    }
    assert "pg-model-proxy" in diag.message_hint


def test_stored_answer_is_returned_by_both_names(conn):
    store(conn, "embedding", "m", "hello", [0.6, 0.8])
    assert conn.execute("SELECT google_ml.embedding('m', 'hello')").fetchone() == ([0.6, 0.8],)
    assert conn.execute(
        "SELECT embedding(model_id => 'm', content => 'hello')"
    ).fetchone() == ([0.6, 0.8],)
    # Another model or text is another call.
    with pytest.raises(psycopg.Error, match="no result"):
        conn.execute("SELECT google_ml.embedding('m2', 'hello')")


def test_keys_are_unambiguous(conn):
    a, b = conn.execute(
        "SELECT google_ml._call_key('embedding', 'ab', 'c'), google_ml._call_key('embedding', 'a', 'bc')"
    ).fetchone()
    assert a != b


def test_null_arguments_give_null(conn):
    assert conn.execute("SELECT google_ml.embedding('m', NULL)").fetchone() == (None,)


def test_predict_row_hit_miss_and_json_navigation(conn):
    body = '{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}'
    answer = [{"candidates": [{"content": {"parts": [{"text": "hello!"}]}}]}]
    store(conn, "predict_row", "gemini-1.5-pro:streamGenerateContent", body, answer)
    text = conn.execute(
        "SELECT json_array_elements(google_ml.predict_row('gemini-1.5-pro:streamGenerateContent', %s::json))"
        " -> 'candidates' -> 0 -> 'content' -> 'parts' -> 0 ->> 'text'",
        (body,),
    ).fetchone()
    assert text == ("hello!",)
    assert conn.execute(
        "SELECT ml_predict_row('gemini-1.5-pro:streamGenerateContent', %s::json)::text", (body,)
    ).fetchone()[0].startswith("[{")
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.predict_row('gemini-1.5-pro:generateContent', '{}')")
    assert failure.value.diag.sqlstate == "PX001"


def test_collect_mode_reports_calls_and_lets_placeholders_through(conn):
    notices: list[tuple[str | None, str | None]] = []
    # A Diagnostic is only valid inside the callback: copy what is needed.
    conn.add_notice_handler(lambda d: notices.append((d.sqlstate, d.message_detail)))
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL pg_model_proxy.collect = on")
        value = conn.execute("SELECT google_ml.embedding('m', 'unseen')").fetchone()[0]
        assert value == [1.0]  # dimension unknown: a one-element unit vector
        store(conn, "embedding", "m", "dim-probe", [0.0, 0.0, 1.0])
        conn.execute(
            "INSERT INTO pg_temp.google_ml_results (key, embedding) VALUES ('dim:m', '{0,0,1}')"
        )
        value = conn.execute("SELECT google_ml.embedding('m', 'unseen too')").fetchone()[0]
        assert len(value) == 3 and abs(sum(x * x for x in value) - 1) < 1e-6
        assert conn.execute(
            "SELECT count(*) FROM json_array_elements(google_ml.predict_row('g', '{\"q\": 1}'))"
        ).fetchone() == (0,)
    calls = [json.loads(detail or "") for sqlstate, detail in notices if sqlstate == "PX002"]
    assert calls == [
        {"fn": "embedding", "model_id": "m", "input": "unseen"},
        {"fn": "embedding", "model_id": "m", "input": "unseen too"},
        {"fn": "predict_row", "model_id": "g", "input": '{"q": 1}'},
    ]


def test_model_support_off_fails_even_with_a_stored_answer(conn):
    store(conn, "embedding", "m", "off", [1.0])
    conn.execute("SET google_ml_integration.enable_model_support = off")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="model support is disabled"):
        conn.execute("SELECT google_ml.embedding('m', 'off')")
    conn.execute("RESET google_ml_integration.enable_model_support")
    assert conn.execute("SELECT google_ml.embedding('m', 'off')").fetchone() == ([1.0],)


def test_generated_column_view_and_trigger_call_it(conn, pgvector):
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    table = f"docs_{uuid.uuid4().hex[:8]}"
    conn.execute(
        f"CREATE TABLE {table} (content text, "
        "emb vector(2) GENERATED ALWAYS AS (embedding('m', content)::vector(2)) STORED, "
        "trigger_emb real[])"
    )
    conn.execute(
        f"CREATE FUNCTION {table}_fill() RETURNS trigger LANGUAGE plpgsql AS "
        "$f$ BEGIN NEW.trigger_emb := google_ml.embedding('m', NEW.content || '!'); RETURN NEW; END $f$"
    )
    conn.execute(f"CREATE TRIGGER fill BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_fill()")
    conn.execute(f"CREATE VIEW {table}_v AS SELECT content, google_ml.embedding('m', content) AS e FROM {table}")
    with pytest.raises(psycopg.Error, match="no result"):
        conn.execute(f"INSERT INTO {table} (content) VALUES ('a')")  # nothing stored: fails whole
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    store(conn, "embedding", "m", "a", [0.6, 0.8])
    store(conn, "embedding", "m", "a!", [1.0, 0.0])
    conn.execute(f"INSERT INTO {table} (content) VALUES ('a')")
    assert conn.execute(f"SELECT emb::text, trigger_emb FROM {table}").fetchone() == ("[0.6,0.8]", [1.0, 0.0])
    assert conn.execute(f"SELECT e FROM {table}_v").fetchone() == ([0.6, 0.8],)


def test_hnsw_index_is_used_for_a_prepared_nearest_neighbour_query(conn, pgvector):
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    table = f"items_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, emb vector(3))")
    conn.execute(
        f"INSERT INTO {table} SELECT i, ARRAY[sin(i), cos(i), sin(i * 7)]::vector(3) "
        "FROM generate_series(1, 2000) i"
    )
    conn.execute(f"CREATE INDEX ON {table} USING hnsw (emb vector_cosine_ops)")
    conn.execute(f"ANALYZE {table}")
    store(conn, "embedding", "m", "query text", [0.1, 0.2, 0.3])
    conn.execute(
        f"PREPARE nn(text) AS SELECT id FROM {table} "
        "ORDER BY emb <=> google_ml.embedding('m', $1)::vector LIMIT 10"
    )
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN EXECUTE nn('query text')"))
    assert f"Index Scan using {table}_emb_idx" in plan, plan
    assert len(conn.execute("EXECUTE nn('query text')").fetchall()) == 10
