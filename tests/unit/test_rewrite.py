"""Statement rewriting and extension emulation, without a server."""

import struct

import pytest

from proxy import emulation
from proxy.intercept import Forward, Held, split
from proxy.sql.rewrite import Rewriter, may_need_rewrite
from proxy.wire.framing import MessageScanner
from proxy.wire.replies import ReplyCollector


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize(
    "sql",
    ["select 1", "insert into t values (1)", "select * from google_ml_models_backup_x"],
)
def test_ordinary_statements_are_left_alone(sql):
    assert Rewriter(emulated=True).rewrite(sql) is None


def test_cheap_test_is_case_insensitive_and_specific():
    assert may_need_rewrite(b"SELECT * FROM PG_Settings")
    assert may_need_rewrite(b"create extension google_ml_integration")
    assert not may_need_rewrite(b"select embedding from items")


def test_native_mode_leaves_extension_statements_to_the_server():
    assert Rewriter(emulated=False).rewrite("CREATE EXTENSION google_ml_integration") is None


@pytest.mark.parametrize(
    "sql, tag",
    [
        ("CREATE EXTENSION google_ml_integration", "CREATE EXTENSION"),
        ("create extension if not exists google_ml_integration version '1.5.3' cascade", "CREATE EXTENSION"),
        ("ALTER EXTENSION google_ml_integration UPDATE TO '1.6'", "ALTER EXTENSION"),
        ("DROP EXTENSION IF EXISTS google_ml_integration CASCADE", "DROP EXTENSION"),
    ],
)
def test_emulated_extension_statements_become_do_blocks(sql, tag):
    rewrite = Rewriter(emulated=True).rewrite(sql)
    assert rewrite is not None
    assert rewrite.sql.startswith("DO $pgmp$")
    assert rewrite.tags == [tag]
    assert "$$" not in rewrite.sql  # would end a client's DO $$ ... $$ around it


def test_multi_statement_query_rewrites_only_its_statement():
    sql = "SELECT 1; SHOW google_ml_integration.enable_model_support ; SELECT 'pg_settings'"
    rewrite = Rewriter(emulated=False).rewrite(sql)
    assert rewrite is not None
    assert rewrite.sql.startswith("SELECT 1; SELECT coalesce(")
    assert rewrite.sql.endswith("; SELECT 'pg_settings'")  # a string literal is not a table
    assert rewrite.tags == [None, "SHOW", None]


def test_create_extension_inside_do_block_is_executed_as_emulation():
    sql = "DO $$ BEGIN CREATE EXTENSION IF NOT EXISTS google_ml_integration; RAISE NOTICE 'x'; END $$"
    rewrite = Rewriter(emulated=True).rewrite(sql)
    assert rewrite is not None
    body = rewrite.sql[rewrite.sql.index("$$") + 2 : rewrite.sql.rindex("$$")]
    assert "$$" not in body
    assert "EXECUTE $pgmp_do$" in body and "RAISE NOTICE 'x'" in body
    assert rewrite.tags == []  # a DO stays a DO


def test_catalog_views_are_swapped_keeping_aliases():
    rewrite = Rewriter(emulated=True).rewrite(
        "SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'google_ml_integration'"
    )
    assert rewrite is not None
    assert "AS e" in rewrite.sql and "emulated by pg-model-proxy" in rewrite.sql
    # A user table that happens to be called pg_extension in another schema is not touched.
    assert Rewriter(emulated=True).rewrite("SELECT * FROM myschema.pg_extension") is None


def test_syntax_errors_are_left_for_the_server():
    assert Rewriter(emulated=True).rewrite("SELEC * FROM pg_settings") is None


def test_upgrade_path_and_versions():
    scripts = emulation.scripts()
    assert scripts.default_version == "1.6"
    assert len(scripts.upgrade_path("1.5.3", "1.6")) == 1
    assert len(scripts.install_scripts("1.5.3")) == 1
    with pytest.raises(emulation.EmulationError, match="no update path"):
        scripts.upgrade_path("1.6", "1.5.3")


def test_reply_collector_rows_error_and_async_messages():
    row = msg(b"D", struct.pack("!H", 2) + struct.pack("!i", 1) + b"7" + struct.pack("!i", -1))
    notification = msg(b"A", struct.pack("!I", 1) + b"chan\0payload\0")
    stream = msg(b"T", b"...") + notification + row + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I") + b"after"
    collector = ReplyCollector()
    for_client, rest = collector.feed(stream[:7])
    assert not collector.done and for_client == b""
    for_client, rest = collector.feed(stream[7:])
    assert collector.done and collector.rows == [("7", None)]
    assert for_client == notification and rest == b"after"


def test_split_cuts_held_messages_at_their_offsets():
    q1, q2, s = msg(b"Q", b"select 1\0"), msg(b"Q", b"show google_ml_integration.x\0"), msg(b"S", b"")
    data = q1 + q2 + s
    scanner = MessageScanner(note=b"S", keep=b"QP", frontend=True, track_offsets=True)
    events = scanner.feed(data)
    hold = [t == ord("Q") and b and may_need_rewrite(b) for t, b in events]
    segments = split(data, events, scanner.offsets, hold)
    assert [type(x) for x in segments] == [Forward, Held, Forward]
    assert segments[0].data == q1 and segments[1].raw == q2 and segments[2].data == s
    assert segments[1].sql() == "show google_ml_integration.x"
    assert segments[1].with_sql("select 2") == msg(b"Q", b"select 2\0")


def test_held_parse_keeps_name_and_parameter_types():
    body = b"stmt1\0show google_ml_integration.x\0" + struct.pack("!HI", 1, 25)
    held = Held(ord("P"), body, msg(b"P", body))
    assert held.with_sql("select $1") == msg(b"P", b"stmt1\0select $1\0" + struct.pack("!HI", 1, 25))


@pytest.mark.parametrize("major, rewritten", [(15, True), (16, True), (17, False), (18, False), (0, False)])
def test_alter_system_of_a_placeholder_before_postgres_17(major, rewritten):
    rewrite = Rewriter(emulated=False, server_major=major).rewrite(
        "ALTER SYSTEM SET google_ml_integration.enable_model_support = off"
    )
    if not rewritten:
        assert rewrite is None
    else:
        assert rewrite is not None
        assert rewrite.sql == "ALTER ROLE ALL SET google_ml_integration.enable_model_support TO 'off'"
        assert rewrite.tags == ["ALTER SYSTEM"]
    # Other settings are the server's business.
    assert Rewriter(emulated=False, server_major=major).rewrite("ALTER SYSTEM SET work_mem = '8MB'") is None


def test_bind_parsing_and_literals():
    from proxy.prediction import quote_literal
    from proxy.wire.bind import (
        UnsupportedParameter,
        literal,
        parameter_types,
        parse_bind,
        statement_name,
    )

    body = (
        b"portal\0stmt\0" + struct.pack("!HHH", 2, 0, 1) + struct.pack("!H", 3)
        + struct.pack("!i", 5) + b"hello" + struct.pack("!i", 4) + struct.pack("!i", 42) + struct.pack("!i", -1)
        + struct.pack("!H", 0)
    )
    bound = parse_bind(body)
    assert statement_name(body) == b"stmt" and bound.portal == b"portal"
    assert bound.values == (b"hello", struct.pack("!i", 42), None)
    assert [bound.format_of(n) for n in range(2)] == [0, 1]
    assert "it's" in literal(b"it's", 0, 0, quote_literal)
    assert literal(struct.pack("!i", 42), 1, 23, quote_literal) == "42"
    assert literal(None, 0, 0, quote_literal) == "NULL"
    with pytest.raises(UnsupportedParameter):
        literal(b"\x00\x01", 1, 17, quote_literal)  # bytea in binary
    parse = b"s\0select $1\0" + struct.pack("!HII", 2, 25, 23)
    assert parameter_types(parse) == (25, 23)
