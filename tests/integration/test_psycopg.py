"""psycopg 3 (libpq) through the proxy: pipelines, COPY, cursors, cancel, auth, notifications."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from psycopg import errors, sql

from tests.support import MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, wait_until


def unique(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conn(proxy) -> Iterator[psycopg.Connection]:
    with psycopg.connect(proxy.dsn(), connect_timeout=30) as c:
        yield c


@pytest.fixture
def aconn(proxy) -> Iterator[psycopg.Connection]:
    """An autocommit connection through the proxy."""
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=30) as c:
        yield c


@pytest.fixture
def direct(database) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database.direct_dsn(), autocommit=True, connect_timeout=30) as c:
        yield c


@pytest.fixture
def table(direct) -> Iterator[str]:
    """A unique table name, dropped afterwards (list it before `conn` so `conn` closes first)."""
    name = unique()
    yield name
    direct.execute("set lock_timeout = '10s'")
    direct.execute(f"drop table if exists {name}")


# --- pipeline mode -------------------------------------------------------------------


def test_pipeline_many_statements(table, aconn):
    aconn.execute(f"create table {table} (id int primary key, sq int)")
    with aconn.pipeline() as p:
        with aconn.cursor() as cur:
            cur.executemany(
                f"insert into {table} values (%s, %s)", [(i, i * i) for i in range(500)]
            )
        cursors = [aconn.execute("select %s::int + 1000", (i,)) for i in range(200)]
        p.sync()
        results = [c.fetchone()[0] for c in cursors]
        total = aconn.execute(f"select count(*), sum(sq) from {table}")
    assert results == [i + 1000 for i in range(200)]
    assert total.fetchone() == (500, sum(i * i for i in range(500)))
    assert aconn.info.pipeline_status == psycopg.pq.PipelineStatus.OFF


def test_pipeline_error_in_the_middle_and_recovery(table, aconn):
    aconn.execute(f"create table {table} (id int primary key)")
    with pytest.raises(errors.UniqueViolation), aconn.pipeline() as p:
        aconn.execute(f"insert into {table} values (1)")
        p.sync()  # this batch is committed whatever follows
        aconn.execute(f"insert into {table} values (2)")
        aconn.execute(f"insert into {table} values (1)")  # fails
        aconn.execute(f"insert into {table} values (3)")  # skipped: pipeline aborted
    # The connection recovered: same server session, not in a transaction.
    assert aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    rows = aconn.execute(f"select id from {table} order by id").fetchall()
    # 2 and 1 and 3 were one implicit transaction (one Sync): rolled back together.
    assert rows == [(1,)]

    # A second pipeline on the same connection works normally.
    with aconn.pipeline():
        aconn.execute(f"insert into {table} values (10)")
        cur = aconn.execute(f"select count(*) from {table}")
    assert cur.fetchone() == (2,)


def test_pipeline_error_aborts_later_results(conn):
    with conn.pipeline() as p:
        ok = conn.execute("select 1")
        after = None
        # psycopg raises the error at the first call that reads it: the next execute or the
        # sync, depending on when the server's answer arrives.
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1 / 0")
            after = conn.execute("select 2")
            p.sync()
        assert ok.fetchone() == (1,)
        assert after is None or after.pgresult is None  # skipped: the pipeline was aborted
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        again = conn.execute("select 2")
    assert again.fetchone() == (2,)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


# --- COPY ----------------------------------------------------------------------------


def test_copy_from_stdin_and_to_stdout(table, conn):
    conn.execute(f"create table {table} (id int, name text, price numeric, note text)")
    rows = [
        (i, f"name\t{i}\nü", Decimal(i) / 4, None if i % 5 == 0 else "x\\y") for i in range(10_000)
    ]
    with conn.cursor() as cur:
        with cur.copy(f"copy {table} (id, name, price, note) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        assert cur.rowcount == 10_000
    conn.commit()
    assert conn.execute(f"select count(*) from {table}").fetchone() == (10_000,)

    with (
        conn.cursor() as cur,
        cur.copy(f"copy (select * from {table} order by id) to stdout") as copy,
    ):
        copy.set_types(["int4", "text", "numeric", "text"])
        back = list(copy.rows())
    assert back == rows

    # Raw blocks as well: the text format, byte for byte as the server sent it.
    with (
        conn.cursor() as cur,
        cur.copy(f"copy (select id, name from {table} where id < 3 order by id) to stdout") as copy,
    ):
        raw = b"".join(bytes(block) for block in copy)
    assert raw == b"0\tname\\t0\\n\xc3\xbc\n1\tname\\t1\\n\xc3\xbc\n2\tname\\t2\\n\xc3\xbc\n"


def test_binary_copy(table, conn):
    conn.execute(f"create table {table} (id int8, data bytea, f float8, t timestamptz)")
    import datetime as dt

    base = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    rows = [
        (i, bytes([i % 256]) * (i % 300), i / 3, base + dt.timedelta(seconds=i))
        for i in range(3000)
    ]
    with conn.cursor() as cur, cur.copy(f"copy {table} from stdin (format binary)") as copy:
        copy.set_types(["int8", "bytea", "float8", "timestamptz"])
        for row in rows:
            copy.write_row(row)
    conn.commit()
    assert conn.execute(f"select count(*), sum(length(data)) from {table}").fetchone() == (
        3000,
        sum(i % 300 for i in range(3000)),
    )
    with (
        conn.cursor() as cur,
        cur.copy(f"copy (select * from {table} order by id) to stdout (format binary)") as copy,
    ):
        copy.set_types(["int8", "bytea", "float8", "timestamptz"])
        back = [(r[0], bytes(r[1]), r[2], r[3]) for r in copy.rows()]
    assert back == rows


def test_copy_error_leaves_connection_usable(table, conn):
    conn.execute(f"create table {table} (id int primary key)")
    conn.commit()
    with (
        pytest.raises(errors.UniqueViolation),
        conn.cursor() as cur,
        cur.copy(f"copy {table} from stdin") as copy,
    ):
        for i in [1, 2, 3, 2]:
            copy.write_row((i,))
    conn.rollback()
    # A COPY the client abandons (CopyFail): the server drops what it had received.
    with (
        pytest.raises(RuntimeError, match="client gives up"),
        conn.cursor() as cur,
        cur.copy(f"copy {table} from stdin") as copy,
    ):
        copy.write_row((7,))
        raise RuntimeError("client gives up")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    conn.rollback()
    with conn.cursor() as cur, cur.copy(f"copy {table} from stdin") as copy:
        copy.write_row((8,))
    conn.commit()
    assert conn.execute(f"select array_agg(id) from {table}").fetchone() == ([8],)
    conn.commit()


def test_large_copy_in_and_out(table, conn):
    """Tens of megabytes each way: more than the proxy buffers, so flow control engages."""
    conn.execute(f"create table {table} (id int, chunk text)")
    chunk = "0123456789abcdef" * 4096  # 64 KiB per row
    n = 640  # 40 MiB
    with conn.cursor() as cur, cur.copy(f"copy {table} from stdin") as copy:
        for i in range(n):
            copy.write(f"{i}\t{chunk}\n".encode())
    conn.commit()
    assert conn.execute(f"select count(*), sum(length(chunk)) from {table}").fetchone() == (
        n,
        n * len(chunk),
    )
    received = 0
    with conn.cursor() as cur, cur.copy(f"copy {table} to stdout") as copy:
        for block in copy:
            received += len(block)
    assert received == sum(len(f"{i}\t{chunk}\n") for i in range(n))
    rows = conn.execute(f"select id, chunk from {table} order by id").fetchall()
    assert len(rows) == n and all(r[1] == chunk for r in rows)
    conn.commit()


# --- server-side cursors -------------------------------------------------------------


def test_named_cursor_fetches_in_batches(conn):
    with conn.cursor(name=unique("cur")) as cur:
        cur.itersize = 777
        cur.execute("select g, md5(g::text) from generate_series(1, 10000) g order by g")
        first = cur.fetchmany(1000)
        assert [r[0] for r in first] == list(range(1, 1001))
        rest = list(cur)
        # The cursor exists on the server while it is being read.
        assert conn.execute(
            "select count(*) from pg_cursors where name = %s", (cur.name,)
        ).fetchone() == (1,)
    ids = [r[0] for r in first + rest]
    assert ids == list(range(1, 10001))
    assert rest[-1][1] == conn.execute("select md5('10000')").fetchone()[0]


def test_named_cursor_scroll_and_withhold(conn):
    name = unique("hold")
    with conn.cursor(name=name, scrollable=True, withhold=True) as cur:
        cur.execute("select g from generate_series(1, 10000) g")
        conn.commit()  # WITH HOLD keeps it past the commit
        cur.scroll(9990, mode="absolute")
        assert [r[0] for r in cur.fetchall()] == list(range(9991, 10001))
        cur.scroll(0, mode="absolute")
        assert cur.fetchone() == (1,)


# --- cancel --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
def test_cancel_from_another_thread(proxy, direct, protocol, server_version_num):
    if protocol == "3.2" and server_version_num < 180000:
        pytest.skip("protocol 3.2 needs PostgreSQL 18")
    # Protocol 3.2 (PostgreSQL 18, libpq 18) has 32-byte cancel keys instead of 4-byte ones.
    marker = unique("sleep")
    errors_in_thread: list[BaseException] = []
    dsn = proxy.dsn(min_protocol_version=protocol, max_protocol_version=protocol)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.info.full_protocol_version == {"3.0": 30000, "3.2": 30002}[protocol]
        pid = conn.info.backend_pid

        def running() -> bool:
            row = direct.execute(
                "select state from pg_stat_activity where pid = %s and query like %s",
                (pid, f"%{marker}%"),
            ).fetchone()
            return row is not None and row[0] == "active"

        def canceller() -> None:
            try:
                if wait_until(running, timeout=20):
                    cancel = getattr(conn, "cancel_safe", None) or conn.cancel
                    cancel()
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors_in_thread.append(exc)

        thread = threading.Thread(target=canceller)
        thread.start()
        started = time.monotonic()
        try:
            with pytest.raises(
                errors.QueryCanceled, match="canceling statement due to user request"
            ):
                conn.execute(f"select pg_sleep(30) /* {marker} */")
        finally:
            thread.join(30)
        assert time.monotonic() - started < 25
        assert not errors_in_thread
        assert conn.execute("select pg_backend_pid()").fetchone() == (pid,)
        # The old-style cancel (PQcancel) works as well.
        thread = threading.Thread(target=lambda: wait_until(running, timeout=20) and conn.cancel())
        thread.start()
        try:
            with pytest.raises(errors.QueryCanceled):
                conn.execute(f"select pg_sleep(30) /* {marker} */")
        finally:
            thread.join(30)
        assert conn.execute("select 1").fetchone() == (1,)
    assert not running()


@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
def test_client_killed_mid_query_is_cancelled_on_server(proxy, direct, protocol, server_version_num):
    if protocol == "3.2" and server_version_num < 180000:
        pytest.skip("protocol 3.2 needs PostgreSQL 18")
    """A client that vanishes without Terminate: the proxy cancels its statement."""
    marker = unique("vanish")
    dsn = proxy.dsn(min_protocol_version=protocol, max_protocol_version=protocol)
    code = (
        "import psycopg, sys\n"
        f"c = psycopg.connect({dsn!r}, autocommit=True)\n"
        "assert c.info.full_protocol_version == 30000 + int(sys.argv[1])\n"
        "print(c.info.backend_pid, flush=True)\n"
        f"c.execute('select pg_sleep(30) /* {marker} */')\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, protocol[-1]], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline())

        def state() -> str | None:
            row = direct.execute(
                "select state from pg_stat_activity where pid = %s and query like %s",
                (pid, f"%{marker}%"),
            ).fetchone()
            return row[0] if row else None

        assert wait_until(lambda: state() == "active", timeout=20)
    finally:
        child.kill()
        child.wait(30)
    # Directly connected, the server would sleep on for 30 s; through the proxy it stops.
    try:
        assert wait_until(lambda: state() != "active", timeout=10), proxy.log_text()[-3000:]
    finally:
        direct.execute("select pg_terminate_backend(%s)", (pid,))
    assert "disconnected mid-statement" in proxy.log_text()


# --- notifications -------------------------------------------------------------------


def test_notifications(proxy, aconn):
    channel = unique("chan")
    aconn.execute(f"listen {channel}")
    with psycopg.connect(proxy.dsn(), autocommit=True) as sender:
        sender.execute("select pg_notify(%s, %s)", (channel, "payload ü"))
        sender.execute(f"notify {channel}")
        sender_pid = sender.info.backend_pid
    got = list(aconn.notifies(timeout=10, stop_after=2))
    assert [(n.channel, n.payload, n.pid) for n in got] == [
        (channel, "payload ü", sender_pid),
        (channel, "", sender_pid),
    ]
    # Nothing more is pending: a short wait returns empty.
    assert list(aconn.notifies(timeout=0.2)) == []


def test_notification_delivered_while_idle_in_query(proxy, aconn):
    channel = unique("chan")
    aconn.execute(f"listen {channel}")
    seen: list[psycopg.Notify] = []
    aconn.add_notify_handler(seen.append)
    with psycopg.connect(proxy.dsn(), autocommit=True) as sender:
        sender.execute(f"notify {channel}, 'during'")
    # The notification rides along with the next query's answer.
    assert wait_until(
        lambda: aconn.execute("select 1").fetchone() == (1,) and bool(seen), timeout=10
    )
    assert [(n.channel, n.payload) for n in seen] == [(channel, "during")]


# --- prepared statements, transactions -----------------------------------------------


def test_prepared_statements(conn):
    query = f"select %s::int * 2, '{unique('q')}'"
    for i in range(6):
        assert conn.execute(query, (i,), prepare=True).fetchone()[0] == i * 2
    names = conn.execute(
        "select name from pg_prepared_statements where statement like %s",
        ("%" + query.split("'")[1] + "%",),
    ).fetchall()
    assert len(names) == 1
    assert names[0][0].startswith("_pg3_")

    # Automatic preparation after prepare_threshold executions.
    conn.prepare_threshold = 2
    auto = f"select %s::text || '{unique('auto')}'"
    for i in range(5):
        assert conn.execute(auto, (str(i),)).fetchone()[0].startswith(str(i))
    marker = auto.split("'")[1]
    assert conn.execute(
        "select count(*) from pg_prepared_statements where statement like %s", (f"%{marker}%",)
    ).fetchone() == (1,)


def test_autocommit_and_transactions(proxy, direct, table):
    with psycopg.connect(proxy.dsn()) as conn:
        assert not conn.autocommit
        conn.execute(f"create table {table} (id int)")
        conn.execute(f"insert into {table} values (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert direct.execute(
            "select count(*) from pg_tables where tablename = %s", (table,)
        ).fetchone() == (0,)
        conn.commit()
        assert direct.execute(f"select count(*) from {table}").fetchone() == (1,)

        conn.execute(f"insert into {table} values (2)")
        conn.rollback()
        assert conn.execute(f"select count(*) from {table}").fetchone() == (1,)

        with conn.transaction():
            conn.execute(f"insert into {table} values (3)")
            with pytest.raises(errors.DivisionByZero), conn.transaction():  # savepoint
                conn.execute(f"insert into {table} values (4)")
                conn.execute("select 1 / 0")
        conn.commit()
        assert direct.execute(f"select array_agg(id order by id) from {table}").fetchone() == (
            [1, 3],
        )

        conn.execute("select 1")
        with pytest.raises(errors.UndefinedTable):
            conn.execute("select * from no_such_table_here")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)
        conn.rollback()

        conn.autocommit = True
        conn.execute(f"insert into {table} values (5)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert direct.execute(f"select count(*) from {table} where id = 5").fetchone() == (1,)


# --- authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password", "method"),
    [(MD5_USER, MD5_PASSWORD, "md5"), (SCRAM_USER, SCRAM_PASSWORD, "scram-sha-256")],
)
def test_password_users(proxy, direct, user, password, method):
    with psycopg.connect(proxy.dsn(user=user, password=password)) as conn:
        assert conn.execute("select current_user, session_user").fetchone() == (user, user)
        assert conn.pgconn.used_password
        pid = conn.info.backend_pid
        row = direct.execute(
            "select a.usename, a.client_addr is null from pg_stat_activity a where a.pid = %s",
            (pid,),
        ).fetchone()
        assert row == (user, True)  # reached the server over its Unix socket, as that user
    stored = direct.execute(
        "select rolpassword from pg_authid where rolname = %s", (user,)
    ).fetchone()[0]
    assert stored.startswith("md5" if method == "md5" else "SCRAM-SHA-256$")


@pytest.mark.parametrize("user", [MD5_USER, SCRAM_USER])
def test_wrong_password_fails_with_server_error(proxy, user):
    with pytest.raises(
        psycopg.OperationalError, match=f'password authentication failed for user "{user}"'
    ):
        psycopg.connect(proxy.dsn(user=user, password="not the password"), connect_timeout=30)
    # And the proxy is still fine afterwards.
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# --- parameter status ----------------------------------------------------------------


def test_parameter_status_changes(aconn):
    assert aconn.info.parameter_status("server_version") is not None
    aconn.execute("set TimeZone = 'Asia/Tokyo'")
    assert aconn.info.parameter_status("TimeZone") == "Asia/Tokyo"
    assert aconn.info.timezone.key == "Asia/Tokyo"
    name = unique("app")
    aconn.execute(sql.SQL("set application_name = {}").format(name))
    assert aconn.info.parameter_status("application_name") == name
    aconn.execute("reset application_name")
    assert aconn.info.parameter_status("application_name") == ""
    aconn.execute("set DateStyle = 'SQL, DMY'")
    assert aconn.info.parameter_status("DateStyle") == "SQL, DMY"


def test_parameter_status_in_startup(proxy, direct):
    name = unique("startup")
    with psycopg.connect(
        proxy.dsn(application_name=name, options="-c%20TimeZone%3DPacific/Auckland")
    ) as conn:
        assert conn.info.parameter_status("application_name") == name
        assert conn.info.parameter_status("TimeZone") == "Pacific/Auckland"
        pid = conn.info.backend_pid
        assert direct.execute(
            "select application_name from pg_stat_activity where pid = %s", (pid,)
        ).fetchone() == (name,)
    version_direct = direct.info.parameter_status("server_version")
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.info.parameter_status("server_version") == version_direct
        assert conn.info.server_version == direct.info.server_version
