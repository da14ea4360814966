"""What hides model calls, and which statements reach them (sans server: catalog rows given)."""

from __future__ import annotations

import pytest

from proxy.prediction import timeout_ms
from proxy.sql.calls import collect_refusal
from proxy.sql.hiding import CatalogCache, HidingCatalog, may_change_catalog

ROWS = [
    ("f", "google_ml", "embedding"),  # the prediction functions themselves are visible calls
    ("f", "public", "embed_text"),
    ("r", "public", "embedded_view"),
    ("w", "public", "docs"),
    ("w", "app", "notes"),
]
CATALOG = HidingCatalog.from_rows(ROWS)


def test_rows_are_grouped_and_visible_functions_left_out():
    assert CATALOG.functions == {("public", "embed_text")}
    assert CATALOG.reads == {("public", "embedded_view")}
    assert CATALOG.writes == {("public", "docs"), ("app", "notes")}
    assert not HidingCatalog.from_rows([("f", "google_ml", "embedding")])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"INSERT INTO docs VALUES (1)", True),
        (b"insert into DOCS values (1)", True),
        (b"select * from docs_archive", False),  # a word, not a prefix
        (b"select mydocs from t", False),
        (b"select $docs", False),
        (b"select embed_text('x')", True),
        (b"select 1", False),
    ],
)
def test_cheap_test_matches_whole_names_only(query, expected):
    assert CATALOG.may_hide(query) is expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("INSERT INTO docs (content) VALUES ('a')", True),
        ("UPDATE public.docs SET content = 'b'", True),
        ("DELETE FROM docs", True),
        ("COPY docs FROM STDIN", True),
        ("MERGE INTO docs d USING src s ON false WHEN NOT MATCHED THEN INSERT VALUES (s.x)", True),
        ("WITH w AS (INSERT INTO docs VALUES ('a') RETURNING 1) SELECT * FROM w", True),
        ("INSERT INTO app.notes VALUES (1)", True),
        ("INSERT INTO other.notes VALUES (1)", False),  # another schema's table
        ("SELECT * FROM docs", False),  # reading a table with a generated column calls nothing
        ("COPY docs TO STDOUT", False),
        ("SELECT * FROM embedded_view", True),
        ("SELECT * FROM t JOIN embedded_view USING (id)", True),
        ("SELECT embed_text(body) FROM t", True),
        ("CALL embed_text('x')", True),
        ("DO $$ BEGIN PERFORM embed_text('x'); END $$", True),
        ("DO $$ BEGIN PERFORM 1; END $$", False),
        ("CREATE VIEW v2 AS SELECT * FROM embedded_view", False),  # a definition runs nothing
        ("SELECT 'docs'", False),
        ("SELECT FROM", False),  # does not parse: the server reports it
    ],
)
def test_statements_that_reach_hidden_calls(sql, expected):
    assert CATALOG.hides_calls(sql) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"CREATE TRIGGER t", True),
        (b"  -- migration\n/* v2 */ alter table t", True),
        (b"drop view v", True),
        (b"DO $$ $$", True),
        (b"select 1", False),
        (b"dont", False),
        (b"-- only a comment", False),
    ],
)
def test_ddl_cheap_test(query, expected):
    assert may_change_catalog(query) is expected


def test_cache_expires_and_is_invalidated(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("proxy.sql.hiding.time.monotonic", lambda: now[0])
    cache = CatalogCache(ttl=60)
    assert cache.get("db") is None
    cache.put("db", CATALOG)
    assert cache.get("db") is CATALOG and cache.get("other") is None
    now[0] += 61
    assert cache.get("db") is None
    cache.put("db", CATALOG)
    cache.invalidate("db")
    assert cache.get("db") is None


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("INSERT INTO docs VALUES ('a')", None),
        ("INSERT INTO docs VALUES ('a'); SELECT * FROM docs", None),
        ("SET search_path = app; UPDATE docs SET x = 1", None),
        ("COPY docs FROM STDIN", "COPY FROM STDIN"),
        ("BEGIN; INSERT INTO docs VALUES ('a'); COMMIT", "TRANSACTION"),
        ("VACUUM docs; INSERT INTO docs VALUES ('a')", "VACUUM"),
    ],
)
def test_collect_refusal(sql, refused):
    reason = collect_refusal(sql)
    assert reason is None if refused is None else refused in (reason or "")


@pytest.mark.parametrize(
    ("setting", "ms"),
    [(None, 0), ("0", 0), ("250ms", 250), ("5s", 5000), ("2min", 120_000), ("1h", 3_600_000), ("1500", 1500), ("x", 0)],
)
def test_statement_timeout_setting(setting, ms):
    assert timeout_ms(setting) == ms
