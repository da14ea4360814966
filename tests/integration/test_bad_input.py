"""Bad input from a client costs that client its connection, never the proxy or anyone else."""

from __future__ import annotations

import socket
import struct

import psycopg
import pytest

from tests.rawclient import RawConnection, cancel_packet, error_fields, msg, query, startup_packet
from tests.support import wait_until


def _server_backends(database, marker: str) -> int:
    """Backends on the server whose current query contains `marker` (not this one)."""
    with psycopg.connect(database.direct_dsn(), autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where query like %s and pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
        return int(row[0])


def _proxy_still_serves(proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("select 42").fetchone() == (42,)


def _expect_fatal(conn: RawConnection, sqlstate: str) -> dict[str, str]:
    """The connection ends with one FATAL ErrorResponse of this SQLSTATE."""
    messages = conn.read_to_close()
    errors = [error_fields(body) for t, body in messages if t == b"E"]
    assert errors, f"expected an ErrorResponse before close, got {messages!r}"
    assert errors[-1]["S"] == "FATAL"
    assert errors[-1]["C"] == sqlstate
    return errors[-1]


@pytest.mark.parametrize(
    "garbage, reason",
    [
        (b"\x00\x01\x02garbage that is not a message at all", "invalid frontend message type"),
        (b"Q\xff\xff\xff\xff" + b"x" * 20, "invalid message length"),  # negative length
        (b"Q\x00\x00\x00\x02", "invalid message length"),  # shorter than its own length field
        (b"S\x7f\xff\xff\xff", "invalid message length"),  # 2 GB Sync
        (b"Q\x7f\xff\xff\xff" + b"select", "invalid message length"),  # 2 GB query
    ],
)
def test_garbage_after_login_gets_protocol_violation_and_others_continue(proxy, garbage, reason):
    bystander = psycopg.connect(proxy.dsn(), autocommit=True)
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.send(garbage)
    error = _expect_fatal(conn, "08P01")
    assert reason in error["M"]
    assert bystander.execute("select 'still here'").fetchone() == ("still here",)
    bystander.close()
    _proxy_still_serves(proxy)


def test_valid_messages_before_garbage_are_still_executed(proxy, database):
    table = "bad_input_prefix"
    with psycopg.connect(database.direct_dsn(), autocommit=True) as direct:
        direct.execute(f"drop table if exists {table}; create table {table}(x int)")
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.send(query(f"insert into {table} values (1)") + b"\x00junk")
    messages = conn.read_to_close()
    assert (b"C", b"INSERT 0 1\x00") in messages
    with psycopg.connect(database.direct_dsn(), autocommit=True) as direct:
        assert direct.execute(f"select count(*) from {table}").fetchone() == (1,)


@pytest.mark.parametrize(
    "packet, reason",
    [
        (struct.pack("!I", 3) + b"abcd", "invalid length of startup packet"),
        (struct.pack("!I", 2_000_000_000) + b"abcd", "invalid length of startup packet"),
        (struct.pack("!II", 8, 2 << 16), "unsupported frontend protocol"),
        (struct.pack("!II", 12, 3 << 16) + b"abc\0", "invalid startup packet layout"),
        (startup_packet(user=""), "no PostgreSQL user name"),
    ],
)
def test_bad_startup_packet_is_refused(proxy, packet, reason):
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.send(packet)
    error = _expect_fatal(conn, "08P01")
    assert reason in error["M"]
    _proxy_still_serves(proxy)


def test_data_after_ssl_request_is_refused(proxy):
    # Unencrypted bytes queued behind an SSLRequest (CVE-2021-23214) must not be read.
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.send(struct.pack("!II", 8, 80877103) + startup_packet())
    error = _expect_fatal(conn, "08P01")
    assert "unencrypted data after SSL request" in error["M"]


def test_gssenc_request_is_declined_and_login_continues(proxy):
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.send(struct.pack("!II", 8, 80877104))
    assert conn.sock.recv(1) == b"N"
    conn.startup()
    conn.send(query("select 7"))
    assert any(t == b"D" for t, _ in conn.read_until(b"Z"))
    conn.close()


def test_client_vanishing_mid_query_cancels_it_on_the_server(proxy, database):
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.send(query("select pg_sleep(60) /* vanish-mid-query */"))
    assert wait_until(lambda: _server_backends(database, "vanish-mid-query") == 1)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # RST, no Terminate
    assert wait_until(lambda: _server_backends(database, "vanish-mid-query") == 0)
    _proxy_still_serves(proxy)


def test_client_vanishing_mid_message_frees_the_server_backend(proxy, database):
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.send(query("select 1 /* truncated-message */"))
    conn.read_until(b"Z")
    # Half a Query message: the header promises 100 bytes, only 10 arrive.
    conn.send(b"Q" + struct.pack("!I", 104) + b"select 1 ")
    backend_pid = conn.process_id
    conn.close()

    def gone() -> bool:
        with psycopg.connect(database.direct_dsn(), autocommit=True) as direct:
            return direct.execute(
                "select count(*) from pg_stat_activity where pid = %s", (backend_pid,)
            ).fetchone() == (0,)

    assert wait_until(gone)


def test_cancel_request_with_unknown_key_is_harmless(proxy):
    bystander = psycopg.connect(proxy.dsn(), autocommit=True)
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.send(cancel_packet(12345, b"\x01\x02\x03\x04"))
    assert conn.read_to_close() == []  # the proxy hangs up without answering, like PostgreSQL
    assert bystander.execute("select 1").fetchone() == (1,)
    bystander.close()


def test_raw_cancel_request_stops_the_running_query(proxy, database):
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.send(query("select pg_sleep(60) /* raw-cancel */"))
    assert wait_until(lambda: _server_backends(database, "raw-cancel") == 1)
    canceller = RawConnection.open(proxy.host, proxy.port)
    canceller.send(cancel_packet(conn.process_id, conn.secret_key))
    messages = conn.read_until(b"Z")
    errors = [error_fields(b) for t, b in messages if t == b"E"]
    assert errors and errors[0]["C"] == "57014"  # query_canceled


def test_protocol_3_2_long_cancel_key_is_relayed(proxy, database):
    if int(database.require_embedded().version().split(".")[0]) < 18:
        pytest.skip("protocol 3.2 needs PostgreSQL 18")
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup(version=(3 << 16) | 2)
    assert len(conn.secret_key) == 32  # PostgreSQL 18 sends 256-bit keys in protocol 3.2
    conn.send(query("select pg_sleep(60) /* long-key */"))
    assert wait_until(lambda: _server_backends(database, "long-key") == 1)
    canceller = RawConnection.open(proxy.host, proxy.port)
    canceller.send(cancel_packet(conn.process_id, conn.secret_key))
    errors = [error_fields(b) for t, b in conn.read_until(b"Z") if t == b"E"]
    assert errors and errors[0]["C"] == "57014"


def test_many_pipelined_small_messages_in_one_write(proxy):
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.send(b"".join(query(f"select {i}") for i in range(2000)))
    rows = []
    for _ in range(2000):
        rows += [b for t, b in conn.read_until(b"Z") if t == b"D"]
    assert len(rows) == 2000
    assert rows[-1].endswith(b"1999")
    conn.send(msg(b"X"))
    assert conn.read_to_close() == []


def test_garbage_behind_a_held_statement_still_gets_it_answered(proxy):
    # The SHOW is held for inspection (slow path) when the garbage arrives behind it.
    conn = RawConnection.open(proxy.host, proxy.port)
    conn.startup()
    conn.send(query("SHOW google_ml_integration.enable_model_support") + b"\x00junk")
    messages = conn.read_to_close()
    assert (b"C", b"SHOW\x00") in messages
    errors = [error_fields(b) for t, b in messages if t == b"E"]
    assert errors and errors[-1]["C"] == "08P01"
