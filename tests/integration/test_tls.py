"""TLS between clients and the proxy, and between the proxy and the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.tls import self_signed_certificate
from tests.conftest import Database
from tests.support import (
    SCRAM_PASSWORD,
    SCRAM_USER,
    create_password_users,
    make_server,
    system_pg_bin,
)


@pytest.fixture(scope="module")
def tls_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A server built with OpenSSL (the distribution's PostgreSQL), TLS on."""
    bin_dir = system_pg_bin()
    if bin_dir is None:
        pytest.skip("no distribution PostgreSQL with OpenSSL installed (apt-get install postgresql)")
    server = make_server(tmp_path_factory.mktemp("tlspg"), bin_dir=bin_dir, tls=True)
    server.start()
    create_password_users(server)
    yield Database("127.0.0.1", server.port, server)
    server.stop()


def _ssl_in_use(conn: psycopg.Connection) -> bool:
    return bool(conn.pgconn.ssl_in_use)


def test_client_tls_with_self_signed_certificate(database, start_proxy):
    proxy = start_proxy("--upstream", database.upstream, "--tls-self-signed")
    with psycopg.connect(proxy.dsn(sslmode="require")) as conn:
        assert _ssl_in_use(conn)
        assert conn.execute("select 'over tls'").fetchone() == ("over tls",)
    with psycopg.connect(proxy.dsn(sslmode="disable")) as conn:  # TLS stays optional
        assert not _ssl_in_use(conn)
        assert conn.execute("select 1").fetchone() == (1,)


def test_client_tls_verify_full_with_given_certificate(database, start_proxy, tmp_path: Path):
    cert, key = self_signed_certificate(tmp_path, "localhost")
    proxy = start_proxy("--upstream", database.upstream, "--tls-cert", str(cert), "--tls-key", str(key))
    dsn = proxy.dsn(sslmode="verify-full", sslrootcert=str(cert)).replace("127.0.0.1", "localhost")
    with psycopg.connect(dsn) as conn:
        assert _ssl_in_use(conn)
        assert conn.execute("select 2").fetchone() == (2,)


def test_client_requiring_tls_from_plain_proxy_is_told_so(proxy):
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(proxy.dsn(sslmode="require"))
    assert "does not support SSL" in str(refused.value)


def test_tls_to_the_server(tls_database, start_proxy):
    proxy = start_proxy("--upstream", tls_database.tcp_upstream("require"))
    with psycopg.connect(proxy.dsn()) as conn:
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row == (True,)


def test_tls_required_but_server_has_none(database, start_proxy):
    if database.server is not None and database.server.settings.get("ssl") == "on":
        pytest.skip("the session server has TLS")
    proxy = start_proxy("--upstream", database.tcp_upstream("require"))
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(proxy.dsn())
    assert "does not support SSL, but SSL was required" in str(refused.value)


def test_scram_over_tls_on_both_legs(tls_database, start_proxy, tmp_path: Path):
    cert, key = self_signed_certificate(tmp_path, "localhost")
    proxy = start_proxy(
        "--upstream", tls_database.tcp_upstream("require"), "--tls-cert", str(cert), "--tls-key", str(key)
    )
    dsn = proxy.dsn(SCRAM_USER, password=SCRAM_PASSWORD, sslmode="require", channel_binding="disable")
    with psycopg.connect(dsn) as conn:
        assert _ssl_in_use(conn)
        assert conn.execute("select current_user").fetchone() == (SCRAM_USER,)


def test_scram_channel_binding_when_proxy_presents_the_server_certificate(tls_database, start_proxy):
    # tls-server-end-point binds to the certificate's hash: with the server's own
    # certificate on the proxy, channel binding verifies end to end.
    server = tls_database.require_embedded()
    cert, key = server.settings["ssl_cert_file"], server.settings["ssl_key_file"]
    proxy = start_proxy(
        "--upstream", tls_database.tcp_upstream("require"), "--tls-cert", cert, "--tls-key", key
    )
    dsn = proxy.dsn(SCRAM_USER, password=SCRAM_PASSWORD, sslmode="require", channel_binding="require")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select current_user").fetchone() == (SCRAM_USER,)
