"""CREATE/ALTER/DROP EXTENSION google_ml_integration through the proxy, in both install modes.

native: the server has the extension's files (the suite's servers get them at start);
emulated: the proxy answers the statements itself with the same sqlfuncs/ scripts
(forced with --extension-mode emulated, as on a managed server without the files).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from proxy.embedded import bundled_bin_dir

EXT = "google_ml_integration"
PRE_REGISTERED = {
    "textembedding-gecko",
    "text-embedding-gecko@001",
    "gemini-1.5-pro:generateContent",
    "gemini-1.5-pro:streamGenerateContent",
    "gemini-1.0-pro:generateContent",
}


@pytest.fixture(params=["native", "emulated"], scope="module")
def mode_proxy(request, database, tmp_path_factory):
    from tests.support import ProxyProcess

    p = ProxyProcess(
        ["--upstream", database.upstream, "--extension-mode", request.param],
        superuser_password=database.password,
    ).start()
    p.mode = request.param  # type: ignore[attr-defined]
    yield p
    p.stop()


@pytest.fixture
def dbname(database) -> Iterator[str]:
    """A fresh database per test, so each test installs the extension from scratch."""
    name = f"ext_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database.direct_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with psycopg.connect(database.direct_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def connect(proxy, dbname, **kw) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(database=dbname), autocommit=True, **kw)


def test_create_extension_reports_like_postgres(mode_proxy, dbname):
    with connect(mode_proxy, dbname) as conn:
        cur = conn.execute(f"CREATE EXTENSION {EXT}")
        assert cur.statusmessage == "CREATE EXTENSION"
        assert conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = %s", (EXT,)
        ).fetchone() == ("1.6",)
        available = conn.execute(
            "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = %s",
            (EXT,),
        ).fetchall()
        assert available == [("1.6", "1.6")]
        assert "1.6" > "1.5.3"  # how clients compare extversion
        models = {r[0] for r in conn.execute("SELECT model_id FROM google_ml.model_info_view")}
        assert PRE_REGISTERED <= models


def test_create_twice_and_if_not_exists(mode_proxy, dbname):
    with connect(mode_proxy, dbname) as conn:
        conn.execute(f"CREATE EXTENSION {EXT}")
        with pytest.raises(psycopg.errors.DuplicateObject, match="already exists"):
            conn.execute(f"CREATE EXTENSION {EXT}")
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        cur = conn.execute(f"CREATE EXTENSION IF NOT EXISTS {EXT}")
        assert cur.statusmessage == "CREATE EXTENSION"
        assert any("already exists, skipping" in n for n in notices)


def test_upgrade_from_an_older_version(mode_proxy, dbname):
    with connect(mode_proxy, dbname) as conn:
        conn.execute(f"CREATE EXTENSION {EXT} VERSION '1.5.3'")
        assert conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = %s", (EXT,)
        ).fetchone() == ("1.5.3",)
        assert conn.execute("SELECT to_regproc('google_ml.model_qualified_name_of')").fetchone() == (None,)
        cur = conn.execute(f"ALTER EXTENSION {EXT} UPDATE")
        assert cur.statusmessage == "ALTER EXTENSION"
        assert conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = %s", (EXT,)
        ).fetchone() == ("1.6",)
        assert conn.execute(
            "SELECT google_ml.model_qualified_name_of('textembedding-gecko')"
        ).fetchone() is not None


def test_drop_cascade_removes_everything(mode_proxy, dbname):
    with connect(mode_proxy, dbname) as conn:
        conn.execute(f"CREATE EXTENSION {EXT}")
        conn.execute("CREATE VIEW my_models AS SELECT model_id FROM google_ml.models")
        with pytest.raises(psycopg.errors.DependentObjectsStillExist):
            conn.execute(f"DROP EXTENSION {EXT}")
        cur = conn.execute(f"DROP EXTENSION {EXT} CASCADE")
        assert cur.statusmessage == "DROP EXTENSION"
        assert conn.execute("SELECT to_regnamespace('google_ml')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('my_models')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = %s", (EXT,)
        ).fetchone() == (0,)
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute(f"DROP EXTENSION {EXT}")
        conn.execute(f"DROP EXTENSION IF EXISTS {EXT}")


def test_create_inside_a_do_block(mode_proxy, dbname):
    with connect(mode_proxy, dbname) as conn:
        conn.execute(f"DO $$ BEGIN CREATE EXTENSION IF NOT EXISTS {EXT}; END $$")
        assert conn.execute(
            "SELECT count(*) FROM google_ml.model_info_view"
        ).fetchone()[0] >= len(PRE_REGISTERED)


def test_create_in_a_rolled_back_transaction_leaves_nothing(mode_proxy, dbname):
    with psycopg.connect(mode_proxy.dsn(database=dbname)) as conn:
        conn.execute(f"CREATE EXTENSION {EXT}")
        assert conn.execute("SELECT count(*) FROM google_ml.models").fetchone()[0] >= 5
        conn.rollback()
        assert conn.execute("SELECT to_regnamespace('google_ml')").fetchone() == (None,)


async def test_asyncpg_create_and_list(mode_proxy, dbname):
    conn = await asyncpg.connect(mode_proxy.dsn(database=dbname))
    try:
        assert await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {EXT}") == "CREATE EXTENSION"
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = $1", EXT
        )
        assert version == "1.6"
        rows = await conn.fetch("SELECT model_id, model_type::text FROM google_ml.model_info_view")
        assert {r["model_id"] for r in rows} >= PRE_REGISTERED
    finally:
        await conn.close()


def test_psql_backslash_dx_lists_it(mode_proxy, dbname):
    with connect(mode_proxy, dbname) as conn:
        conn.execute(f"CREATE EXTENSION {EXT}")
    out = subprocess.run(
        [str(bundled_bin_dir() / "psql"), "-X", "-d", mode_proxy.dsn(database=dbname), "-c", "\\dx"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if EXT in line)
    assert "1.6" in line and "google_ml" in line
