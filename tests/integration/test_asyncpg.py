"""asyncpg through the proxy: the extended protocol in binary, COPY, cancel, async messages.

asyncpg prepares every statement (named, cached), binds and returns values in binary,
pipelines COPY data, and sends CancelRequests on a connection of its own when a query
times out; all of it has to pass through the relay untouched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import random
import string
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.support import MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER


def unique(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def conn(proxy):
    c = await asyncpg.connect(proxy.dsn(), timeout=30)
    try:
        yield c
    finally:
        await c.close(timeout=10)


@pytest.fixture
async def direct(database):
    """A connection straight to the server, for looking behind the proxy's back."""
    c = await asyncpg.connect(database.direct_dsn(), timeout=30)
    try:
        yield c
    finally:
        await c.close(timeout=10)


@pytest.fixture
async def table(conn):
    """A unique table name, dropped afterwards."""
    name = unique()
    yield name
    await conn.execute(f"drop table if exists {name}")


async def poll(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Await an async condition another process makes true, up to `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return bool(await predicate())


# --- prepared statements -------------------------------------------------------------


async def test_statement_cache_reuses_one_server_statement(conn):
    query = f"select $1::int * 2 as doubled, '{unique('q')}' as tag"
    results = [await conn.fetchval(query, i) for i in range(50)]
    assert results == [i * 2 for i in range(50)]
    # asyncpg's cache prepared it once on the server and re-bound it 49 times.
    prepared = await conn.fetch(
        "select name from pg_prepared_statements where statement = $1", query
    )
    assert len(prepared) == 1
    assert prepared[0]["name"].startswith("__asyncpg_stmt_")


async def test_prepared_statement_object_reused(conn):
    stmt = await conn.prepare("select $1::text || '-' || $2::int as label, $2::int + 1 as next")
    assert [a.name for a in stmt.get_attributes()] == ["label", "next"]
    assert [p.name for p in stmt.get_parameters()] == ["text", "int4"]
    for i in range(50):
        row = await stmt.fetchrow(f"row{i}", i)
        assert row["label"] == f"row{i}-{i}"
        assert row["next"] == i + 1
    rows = await stmt.fetch("many", 7)
    assert [tuple(r) for r in rows] == [("many-7", 8)]


async def test_explicitly_named_prepared_statements(conn):
    name = unique("stmt")
    stmt = await conn.prepare("select $1::int + $2::int", name=name)
    assert await stmt.fetchval(2, 3) == 5
    assert await stmt.fetchval(40, 2) == 42
    listed = await conn.fetch(
        "select name, parameter_types::text[] as types from pg_prepared_statements where name = $1",
        name,
    )
    assert [(r["name"], r["types"]) for r in listed] == [(name, ["integer", "integer"])]

    # SQL-level PREPARE / EXECUTE / DEALLOCATE go through the simple query protocol.
    sql_name = unique("sqlstmt")
    await conn.execute(f"prepare {sql_name}(int) as select $1 * 10")
    assert await conn.fetchval(f"execute {sql_name}(4)") == 40
    assert await conn.fetchval(f"execute {sql_name}(5)") == 50
    await conn.execute(f"deallocate {sql_name}")
    with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError):
        await conn.fetchval(f"execute {sql_name}(6)")


# --- COPY ----------------------------------------------------------------------------


async def test_copy_records_to_table(conn, table):
    await conn.execute(f"create table {table} (id int primary key, name text, score float8)")
    records = [(i, f"name {i} ü", i / 7) for i in range(10_000)]
    status = await conn.copy_records_to_table(
        table, records=records, columns=["id", "name", "score"]
    )
    assert status == "COPY 10000"
    assert await conn.fetchval(f"select count(*) from {table}") == 10_000
    assert await conn.fetchval(f"select sum(id) from {table}") == sum(range(10_000))
    row = await conn.fetchrow(f"select * from {table} where id = 9999")
    assert tuple(row) == (9999, "name 9999 ü", 9999 / 7)


async def test_copy_from_query_and_copy_to_table_round_trip(conn, table):
    target = unique()
    await conn.execute(f"create table {table} (id int, payload text, note text)")
    await conn.execute(
        f"insert into {table} select g, repeat(md5(g::text), 3), "
        f"case when g % 3 = 0 then null else E'tab\\there \\\\ nl\\n' || g end "
        f"from generate_series(1, 5000) g"
    )
    try:
        await conn.execute(f"create table {target} (like {table})")
        buf = io.BytesIO()
        status = await conn.copy_from_query(
            f"select * from {table} order by id", output=buf, format="binary"
        )
        assert status == "COPY 5000"
        assert len(buf.getvalue()) > 5000 * 96
        buf.seek(0)
        status = await conn.copy_to_table(target, source=buf, format="binary")
        assert status == "COPY 5000"
        diff = await conn.fetchval(
            f"select count(*) from ((table {table} except all table {target}) "
            f"union all (table {target} except all table {table})) d"
        )
        assert diff == 0
        assert await conn.fetchval(f"select count(*) from {target} where note is null") == 1666

        # The same in text format, compared byte for byte.
        text_out = io.BytesIO()
        await conn.copy_from_table(target, output=text_out, format="text")
        again = io.BytesIO()
        await conn.copy_from_query(f"select * from {table}", output=again, format="text")
        assert sorted(text_out.getvalue().splitlines()) == sorted(again.getvalue().splitlines())
    finally:
        await conn.execute(f"drop table if exists {target}")


# --- cancellation --------------------------------------------------------------------


async def test_timeout_cancels_query_and_connection_stays_usable(conn, direct):
    marker = unique("sleep")
    query = f"select pg_sleep(30) /* {marker} */"
    pid = conn.get_server_pid()

    async def running() -> int:
        return await direct.fetchval(
            "select count(*) from pg_stat_activity "
            "where state = 'active' and query like $1 and pid <> pg_backend_pid()",
            f"%{marker}%",
        )

    fetch = asyncio.create_task(conn.fetch(query, timeout=0.5))
    seen_running = await poll(lambda: _gt_zero(running()), timeout=5, interval=0.01)
    with pytest.raises(TimeoutError):
        await fetch
    assert seen_running, "the sleep never showed up as active on the server"

    # The same connection (same server process) answers again...
    assert await conn.fetchval("select 1 + 1", timeout=10) == 2
    assert await conn.fetchval("select pg_backend_pid()") == pid
    # ...and the server is not still sleeping: the CancelRequest reached it.
    assert await poll(lambda: _is_zero(running()), timeout=10)
    state = await direct.fetchval("select state from pg_stat_activity where pid = $1", pid)
    assert state == "idle"


async def _gt_zero(awaitable) -> bool:
    return (await awaitable) > 0


async def _is_zero(awaitable) -> bool:
    return (await awaitable) == 0


# --- types ---------------------------------------------------------------------------


async def test_binary_types_round_trip(conn, table):
    await conn.execute(
        f"""create table {table} (
            id int primary key, n numeric, ts timestamptz, u uuid, b bytea, j jsonb,
            ints int[], texts text[], r int8range, big text)"""
    )
    rng = random.Random(1234)
    big = "".join(rng.choices(string.ascii_letters + "äöü€😀 \n", k=5 * 1024 * 1024))
    values = {
        "n": Decimal("-12345678901234567890.000000000123456789"),
        "ts": dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.UTC),
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "b": bytes(range(256)),
        "j": json.dumps({"a": [1, 2.5, None, True], "ü": {"nested": 'quote " and \\ backslash'}}),
        "ints": [1, None, -2147483648, 2147483647],
        "texts": ["plain", "with,comma", 'with"quote', "", None, "ü€"],
        "r": asyncpg.Range(-(2**62), 2**62),
        "big": big,
    }
    cols = list(values)
    await conn.execute(
        f"insert into {table} (id, {', '.join(cols)}) values (1, "
        + ", ".join(f"${i + 1}" for i in range(len(cols)))
        + ")",
        *values.values(),
    )
    row = await conn.fetchrow(f"select * from {table} where id = 1")
    for col, expected in values.items():
        got = row[col]
        if col == "j":
            assert json.loads(got) == json.loads(expected)
        elif col == "ts":
            assert got == expected
        else:
            assert got == expected, col
    assert len(row["big"]) == len(big)

    # The server saw exactly these bytes, not a transcoding of them.
    server_md5 = await conn.fetchval(f"select md5(big) from {table} where id = 1")
    assert server_md5 == hashlib.md5(big.encode()).hexdigest()
    assert await conn.fetchval(f"select length(b) from {table}") == 256
    assert await conn.fetchval(f"select encode(b, 'hex') from {table}") == bytes(range(256)).hex()
    assert await conn.fetchval(f"select n::text from {table}") == str(values["n"])
    assert await conn.fetchval(f"select upper(r)::numeric - lower(r) from {table}") == 2**63

    # Special numerics and an empty range come back as themselves.
    special = await conn.fetchrow(
        "select 'NaN'::numeric as nan, '0.000'::numeric as z, 'empty'::int8range as e"
    )
    assert special["nan"].is_nan()
    assert str(special["z"]) == "0.000"
    assert special["e"].isempty


async def test_pgvector_values(conn, table, pgvector):
    await conn.execute("create extension if not exists vector")
    await conn.execute(f"create table {table} (id int primary key, v vector(3))")
    await conn.execute(
        f"insert into {table} values (1, '[1,2,3]'), (2, $1::text::vector)", "[0.5,-1,1e3]"
    )
    as_text = await conn.fetch(f"select id, v::text as v from {table} order by id")
    assert [(r["id"], r["v"]) for r in as_text] == [(1, "[1,2,3]"), (2, "[0.5,-1,1000]")]
    nearest = await conn.fetchval(f"select id from {table} order by v <-> '[1,2,2.9]' limit 1")
    assert nearest == 1

    await conn.set_type_codec(
        "vector",
        encoder=lambda v: "[" + ",".join(repr(float(x)) for x in v) + "]",
        decoder=lambda s: [float(x) for x in s.strip("[]").split(",")],
        schema="public",
        format="text",
    )
    await conn.execute(f"insert into {table} values ($1, $2)", 3, [0.25, 0.5, -0.75])
    rows = await conn.fetch(f"select id, v from {table} order by id")
    assert [(r["id"], r["v"]) for r in rows] == [
        (1, [1.0, 2.0, 3.0]),
        (2, [0.5, -1.0, 1000.0]),
        (3, [0.25, 0.5, -0.75]),
    ]
    assert await conn.fetchval(f"select v::text from {table} where id = 3") == "[0.25,0.5,-0.75]"
    dist = await conn.fetchval("select $1::vector <-> $2::vector", [0, 0, 0], [3, 4, 0])
    assert dist == 5.0


# --- transactions --------------------------------------------------------------------


async def test_transactions_commit_and_rollback(conn, direct, table):
    await conn.execute(f"create table {table} (id int primary key)")
    async with conn.transaction():
        await conn.execute(f"insert into {table} values (1), (2)")
        # Not visible from outside until committed.
        assert await direct.fetchval(f"select count(*) from {table}") == 0
    assert await direct.fetchval(f"select count(*) from {table}") == 2

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with conn.transaction():
            await conn.execute(f"insert into {table} values (3)")
            assert await conn.fetchval(f"select count(*) from {table}") == 3
            raise Abort
    assert await conn.fetchval(f"select array_agg(id order by id) from {table}") == [1, 2]

    # Savepoints: a nested block rolls back on its own.
    async with conn.transaction():
        await conn.execute(f"insert into {table} values (4)")
        with pytest.raises(Abort):
            async with conn.transaction():
                await conn.execute(f"insert into {table} values (5)")
                raise Abort
    assert await direct.fetchval(f"select array_agg(id order by id) from {table}") == [1, 2, 4]
    assert not conn.is_in_transaction()


async def test_error_inside_transaction_then_rollback(conn, table):
    await conn.execute(f"create table {table} (id int primary key)")
    tx = conn.transaction()
    await tx.start()
    await conn.execute(f"insert into {table} values (1)")
    with pytest.raises(asyncpg.exceptions.UniqueViolationError):
        await conn.execute(f"insert into {table} values (1)")
    with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
        await conn.fetchval("select 1")
    assert conn.is_in_transaction()
    await tx.rollback()
    assert not conn.is_in_transaction()
    assert await conn.fetchval("select 1") == 1
    assert await conn.fetchval(f"select count(*) from {table}") == 0

    # An error in a prepared statement's Bind (bad parameter) outside a transaction.
    with pytest.raises(asyncpg.exceptions.DataError):
        await conn.fetchval("select $1::int", "not a number")
    with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
        await conn.fetchval("select 1 / $1::int", 0)
    assert await conn.fetchval("select 6 * 7") == 42


# --- asynchronous messages -----------------------------------------------------------


async def test_listen_notify(proxy, conn):
    channel = unique("chan")
    received: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()

    def on_notify(connection, pid, chan, payload):
        received.put_nowait((pid, chan, payload))

    await conn.add_listener(channel, on_notify)
    sender = await asyncpg.connect(proxy.dsn(), timeout=30)
    try:
        await sender.execute("select pg_notify($1, $2)", channel, "hello ü")
        async with sender.transaction():
            await sender.execute(f"notify {channel}, 'second'")
            await sender.execute(f"notify {channel}, 'third'")
        got = [await asyncio.wait_for(received.get(), 10) for _ in range(3)]
        sender_pid = sender.get_server_pid()
    finally:
        await sender.close()
    assert got == [
        (sender_pid, channel, "hello ü"),
        (sender_pid, channel, "second"),
        (sender_pid, channel, "third"),
    ]
    await conn.remove_listener(channel, on_notify)
    assert await conn.fetchval("select 1") == 1


async def test_server_notices_reach_log_listener(conn):
    messages: asyncio.Queue = asyncio.Queue()
    conn.add_log_listener(lambda c, msg: messages.put_nowait(msg))
    await conn.execute(
        "DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful: %', 'ü'; END $$"
    )
    first = await asyncio.wait_for(messages.get(), 10)
    second = await asyncio.wait_for(messages.get(), 10)
    assert isinstance(first, asyncpg.PostgresLogMessage)
    assert (first.severity, first.message) == ("NOTICE", "hello 42")
    assert (second.severity, second.message) == ("WARNING", "careful: ü")
    assert second.sqlstate == "01000"


# --- many clients --------------------------------------------------------------------


async def test_two_hundred_concurrent_connections(proxy, direct):
    assert await direct.fetchval("show max_connections") == "300"
    marker = unique("many")
    n = 200
    conns = await asyncio.gather(
        *(
            asyncpg.connect(proxy.dsn(), timeout=60, server_settings={"application_name": marker})
            for _ in range(n)
        )
    )
    try:
        on_server = await direct.fetchval(
            "select count(*) from pg_stat_activity where application_name = $1", marker
        )
        assert on_server == n

        async def work(i: int, c: asyncpg.Connection) -> tuple[int, int]:
            return tuple(await c.fetchrow("select $1::int * 3, pg_backend_pid()", i))

        results = await asyncio.gather(*(work(i, c) for i, c in enumerate(conns)))
        assert [r[0] for r in results] == [i * 3 for i in range(n)]
        assert len({r[1] for r in results}) == n  # one server process per client
    finally:
        await asyncio.gather(*(c.close(timeout=30) for c in conns), return_exceptions=True)
    assert await poll(
        lambda: _is_zero(
            direct.fetchval(
                "select count(*) from pg_stat_activity where application_name = $1", marker
            )
        ),
        timeout=30,
    )


# --- authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password"), [(MD5_USER, MD5_PASSWORD), (SCRAM_USER, SCRAM_PASSWORD)]
)
async def test_password_users(proxy, user, password):
    c = await asyncpg.connect(proxy.dsn(user=user, password=password), timeout=30)
    try:
        assert await c.fetchval("select current_user") == user
    finally:
        await c.close()
    with pytest.raises(
        asyncpg.exceptions.InvalidPasswordError, match="password authentication failed"
    ):
        await asyncpg.connect(proxy.dsn(user=user, password="wrong"), timeout=30)
