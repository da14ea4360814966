"""google_ml_integration's settings through the proxy: SHOW, SET, pg_settings (SPEC §1)."""

from __future__ import annotations

import subprocess
import uuid

import asyncpg
import psycopg
import pytest

from proxy.embedded import bundled_bin_dir

SUPPORT = "google_ml_integration.enable_model_support"
PG_SETTINGS_QUERY = f"SELECT setting FROM pg_settings WHERE name = '{SUPPORT}'"


def test_show_gives_the_default_before_any_set(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(f"SHOW {SUPPORT}").fetchall() == [("on",)]
        assert conn.execute("SHOW google_ml_integration.enable_preview_ai_functions").fetchone() == ("off",)


def test_show_column_name_and_tag_match_postgres(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.execute(f"SHOW {SUPPORT}")
        assert [c.name for c in cur.description] == [SUPPORT]
        assert cur.statusmessage == "SHOW"


def test_set_then_show_and_pg_settings(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(PG_SETTINGS_QUERY).fetchall() == [("on",)]
        conn.execute(f"SET {SUPPORT} = off")
        assert conn.execute(f"SHOW {SUPPORT}").fetchone() == ("off",)
        assert conn.execute(PG_SETTINGS_QUERY).fetchall() == [("off",)]
        conn.execute(f"RESET {SUPPORT}")
        assert conn.execute(PG_SETTINGS_QUERY).fetchall() == [("on",)]


def test_pg_settings_keeps_every_real_row(proxy, database):
    query = "SELECT count(*) FROM pg_settings"
    with psycopg.connect(database.direct_dsn()) as direct:
        real = direct.execute(query).fetchone()[0]
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute(query).fetchone()[0] == real + 3
        rows = conn.execute(
            "SELECT name, setting, vartype, boot_val FROM pg_catalog.pg_settings "
            "WHERE name LIKE 'google_ml_integration.%' ORDER BY name"
        ).fetchall()
    assert rows == [
        ("google_ml_integration.enable_ai_query_engine", "off", "bool", "off"),
        ("google_ml_integration.enable_model_support", "on", "bool", "on"),
        ("google_ml_integration.enable_preview_ai_functions", "off", "bool", "off"),
    ]


def test_alter_role_set_reaches_new_sessions(proxy, database):
    role = f"r_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database.direct_dsn(), autocommit=True) as direct:
        direct.execute(f"CREATE ROLE {role} LOGIN")
        direct.execute(f"ALTER ROLE {role} SET {SUPPORT} = off")
    try:
        with psycopg.connect(proxy.dsn(role)) as conn:
            assert conn.execute(f"SHOW {SUPPORT}").fetchone() == ("off",)
            assert conn.execute(PG_SETTINGS_QUERY).fetchone() == ("off",)
    finally:
        with psycopg.connect(database.direct_dsn(), autocommit=True) as direct:
            direct.execute(f"DROP ROLE {role}")


async def test_asyncpg_prepared_show_and_pg_settings(proxy):
    conn = await asyncpg.connect(proxy.dsn())
    try:
        assert await conn.fetchval(f"SHOW {SUPPORT}") == "on"
        await conn.execute(f"SET {SUPPORT} = off")
        for _ in range(3):  # asyncpg's statement cache re-executes the rewritten statement
            assert await conn.fetchval(PG_SETTINGS_QUERY) == "off"
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await conn.close()


def test_psql_show(proxy):
    psql = str(bundled_bin_dir() / "psql")
    out = subprocess.run(
        [psql, "-X", "-At", "-d", proxy.dsn(), "-c", f"SHOW {SUPPORT}", "-c", PG_SETTINGS_QUERY],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["on", "on"]


def test_show_in_a_failed_transaction_gets_the_servers_error(proxy):
    with psycopg.connect(proxy.dsn()) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute(f"SHOW {SUPPORT}")
        conn.rollback()
        assert conn.execute(f"SHOW {SUPPORT}").fetchone() == ("on",)


def test_multi_statement_query_with_show_in_the_middle(proxy):
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    try:
        # A simple-protocol Query with three statements: only the SHOW changes.
        conn.pgconn.send_query(f"SELECT 1; SHOW {SUPPORT}; SELECT 3".encode())
        results = []
        while (res := conn.pgconn.get_result()) is not None:
            results.append((res.command_status, res.get_value(0, 0)))
        assert results == [(b"SELECT 1", b"1"), (b"SHOW", b"on"), (b"SELECT 1", b"3")]
    finally:
        conn.close()


def test_alter_system_and_alter_database_set_reach_new_sessions(proxy, database):
    name = f"settings_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        # (before PostgreSQL 17 the proxy turns this into ALTER ROLE ALL SET)
        assert conn.execute(
            "ALTER SYSTEM SET google_ml_integration.enable_preview_ai_functions = on"
        ).statusmessage == "ALTER SYSTEM"
        conn.execute("SELECT pg_reload_conf()")
        conn.execute(f"ALTER DATABASE {name} SET {SUPPORT} = off")
    try:
        def preview_on() -> bool:
            with psycopg.connect(proxy.dsn(database=name)) as c:
                return c.execute("SHOW google_ml_integration.enable_preview_ai_functions").fetchone() == ("on",)

        from tests.support import wait_until

        assert wait_until(preview_on)  # the reload reaches new backends asynchronously
        with psycopg.connect(proxy.dsn(database=name)) as conn:
            assert conn.execute(f"SHOW {SUPPORT}").fetchone() == ("off",)
            assert conn.execute(
                "SELECT setting FROM pg_settings WHERE name = "
                "'google_ml_integration.enable_preview_ai_functions'"
            ).fetchone() == ("on",)
    finally:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET google_ml_integration.enable_preview_ai_functions")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
