"""The proxy's life around its clients: server loss and return, shutdown, limits, memory."""

from __future__ import annotations

import os
import signal
import socket
import threading

import psycopg
import pytest

from tests.rawclient import RawConnection, error_fields, query
from tests.support import wait_until


def _active(database, marker: str) -> int:
    with psycopg.connect(database.direct_dsn(), autocommit=True) as conn:
        return int(
            conn.execute(
                "select count(*) from pg_stat_activity where query like %s and pid <> pg_backend_pid()",
                (f"%{marker}%",),
            ).fetchone()[0]
        )


def _connects(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_backend_killed_gives_clear_fatal_and_new_connections_work(fresh_database, start_proxy):
    proxy = start_proxy("--upstream", fresh_database.upstream)
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    backend = conn.execute("select pg_backend_pid()").fetchone()[0]
    server_pid = fresh_database.require_embedded()
    os.kill(backend, signal.SIGKILL)  # the server process vanishes without a word
    with pytest.raises(psycopg.OperationalError) as failure:
        conn.execute("select 1")
    assert "server closed the connection unexpectedly" in str(failure.value)
    conn.close()
    # The postmaster restarts after a backend crash; the proxy recovers with it.
    assert wait_until(lambda: _connects(proxy.dsn()), timeout=30)
    assert server_pid is not None


def test_server_down_then_back(fresh_database, start_proxy):
    proxy = start_proxy("--upstream", fresh_database.upstream)
    server = fresh_database.require_embedded()
    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    server.stop()
    # A connected client learns from the server's own FATAL (fast shutdown) or ours.
    with pytest.raises(psycopg.OperationalError):
        idle.execute("select 1")
    idle.close()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(proxy.dsn(), connect_timeout=5)
    assert "could not connect to the server" in str(refused.value)
    server.start()
    assert _connects(proxy.dsn())  # no proxy restart needed
    assert "could not connect to" in proxy.log_text()


def test_sigterm_lets_running_statement_finish_then_exits(database, start_proxy):
    proxy = start_proxy("--upstream", database.upstream)
    busy = psycopg.connect(proxy.dsn(), autocommit=True)
    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    result: list[object] = []

    def run() -> None:
        result.append(busy.execute("select pg_sleep(1.5), 'finished' /* graceful */").fetchone())

    worker = threading.Thread(target=run)
    worker.start()
    assert wait_until(lambda: _active(database, "graceful") == 1)
    proxy.signal(signal.SIGTERM)
    worker.join(30)
    assert result and result[0][1] == "finished"  # the running statement completed
    assert proxy.wait(30) == 0
    with pytest.raises(psycopg.OperationalError) as ended:
        idle.execute("select 1")
    assert "terminating connection due to administrator command" in str(ended.value)
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.port), timeout=2)
    busy.close()
    idle.close()


def test_shutdown_timeout_cancels_long_statement(database, start_proxy):
    proxy = start_proxy("--upstream", database.upstream, "--shutdown-timeout", "0.3")
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.send(query("select pg_sleep(60) /* shutdown-timeout */"))
    assert wait_until(lambda: _active(database, "shutdown-timeout") == 1)
    proxy.signal(signal.SIGTERM)
    messages = conn.read_to_close()
    errors = [error_fields(b) for t, b in messages if t == b"E"]
    assert errors and errors[-1]["C"] == "57P01"
    assert proxy.wait(30) == 0
    assert wait_until(lambda: _active(database, "shutdown-timeout") == 0)


def test_max_clients_refuses_with_too_many_clients(database, start_proxy):
    proxy = start_proxy("--upstream", database.upstream, "--max-clients", "2")
    first = psycopg.connect(proxy.dsn())
    second = psycopg.connect(proxy.dsn())
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(proxy.dsn())
    assert "too many clients" in str(refused.value)
    first.close()
    assert wait_until(lambda: _connects(proxy.dsn()))  # a slot frees up when one leaves
    second.close()


def test_slow_reader_cannot_make_the_proxy_buffer_a_large_result(database, start_proxy):
    proxy = start_proxy("--upstream", database.upstream, "--buffer-size", "65536")
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    baseline = proxy.rss_kib()
    # 400 MB of rows that the client never reads.
    conn.send(query("select repeat('x', 1000000) from generate_series(1, 400) /* slow-reader */"))

    def server_blocked_on_client() -> bool:
        with psycopg.connect(database.direct_dsn(), autocommit=True) as direct:
            row = direct.execute(
                "select wait_event from pg_stat_activity where query like '%slow-reader%' "
                "and pid <> pg_backend_pid()"
            ).fetchone()
            return row is not None and row[0] == "ClientWrite"

    # The server ends up waiting to write: the proxy stopped reading it.
    assert wait_until(server_blocked_on_client, timeout=30)
    assert proxy.rss_kib() - baseline < 32 * 1024, "proxy buffered the result instead of pausing"
    conn.close()
    assert wait_until(lambda: _active(database, "slow-reader") == 0)
