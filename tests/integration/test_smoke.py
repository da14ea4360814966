"""The proxy answers like the server it fronts."""

import psycopg


def test_select_through_proxy(proxy, database):
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("select 1 + 1").fetchone() == (2,)
        via_proxy = conn.execute("show server_version").fetchone()
    with psycopg.connect(database.direct_dsn()) as conn:
        assert conn.execute("show server_version").fetchone() == via_proxy
