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


SEED_SCRIPT = """
CREATE EXTENSION IF NOT EXISTS google_ml_integration;
CALL google_ml.create_sm_secret(secret_id => 'openai-key', secret_path => 'projects/p/secrets/openai/versions/1');
CALL google_ml.create_model(
  model_id => 'openai-emb',
  model_provider => 'open_ai',
  model_qualified_name => 'text-embedding-3-small',
  model_type => 'text_embedding',
  model_auth_type => 'secret_manager',
  model_auth_id => 'openai-key');
CALL google_ml.create_model('claude', 'https://api.anthropic.com/v1/messages', 'anthropic', 'generic',
  'claude-3-opus-20240229', 'secret_manager', 'openai-key', 'google_ml.anthropic_claude_header_gen_fn');
\\x on
SELECT * FROM google_ml.list_model('openai-emb') AS t(model_id varchar, model_availability text,
  model_request_url varchar, model_provider google_ml.model_provider, model_type google_ml.model_type,
  model_qualified_name varchar, model_auth_type google_ml.auth_type, model_auth_id varchar,
  header_gen_fn varchar, input_transform_fn varchar, output_transform_fn varchar,
  input_batch_transform_fn varchar, output_batch_transform_fn varchar);
\\x off
CALL google_ml.alter_model('claude', model_qualified_name => 'claude-3-haiku-20240307');
SELECT model_id, model_qualified_name FROM google_ml.model_info_view WHERE model_id IN ('claude', 'openai-emb') ORDER BY 1;
CALL google_ml.drop_model('claude');
CALL google_ml.drop_model('openai-emb');
CALL google_ml.drop_sm_secret('openai-key');
SELECT count(*) AS left_over FROM google_ml.models WHERE model_id IN ('claude', 'openai-emb');
"""


def test_psql_management_script_of_the_seed_documents(mode_proxy, dbname):
    out = subprocess.run(
        [str(bundled_bin_dir() / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", mode_proxy.dsn(database=dbname)],
        input=SEED_SCRIPT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "CREATE EXTENSION" in text and text.count("CALL") == 7
    assert "model_request_url         | https://api.openai.com/v1/embeddings" in text
    assert "input_transform_fn        | google_ml.openai_text_embedding_input_transform" in text
    assert "model_auth_id             | openai-key" in text
    assert " claude     | claude-3-haiku-20240307" in text
    assert " left_over \n-----------\n         0" in text


async def test_asyncpg_management_with_bind_parameters(mode_proxy, dbname):
    conn = await asyncpg.connect(mode_proxy.dsn(database=dbname))
    try:
        await conn.execute(f"CREATE EXTENSION {EXT}")
        await conn.execute(
            "CALL google_ml.create_model(model_id => $1, model_request_url => $2, "
            "model_provider => 'hugging_face', model_type => 'generic')",
            "hf", "https://api-inference.huggingface.co/models/gpt2",
        )
        # asyncpg cannot decode an anonymous record holding enums (directly either): as text.
        record = await conn.fetchval("SELECT google_ml.list_model($1)::text", "hf")
        assert record.startswith("(hf,") and "/models/gpt2" in record
        qualified = await conn.fetchval("SELECT google_ml.model_qualified_name_of($1)", "hf")
        assert qualified is None or isinstance(qualified, str)
        with pytest.raises(asyncpg.PostgresError, match="Model does not exist for model_id: nope"):
            await conn.execute("CALL google_ml.drop_model('nope')")
        await conn.execute("CALL google_ml.drop_model($1)", "hf")
        assert await conn.fetchval("SELECT count(*) FROM google_ml.models WHERE model_id = 'hf'") == 0
    finally:
        await conn.close()


def test_auto_mode_emulates_when_the_server_has_no_files(database, start_proxy, dbname):
    """auto: the first session asks pg_available_extensions; without the files: emulated."""
    server = database.require_embedded()
    assert server.bin_dir is not None
    from proxy.extension import extension_dir

    ext_dir = extension_dir(server.bin_dir / "pg_config")
    hidden = ext_dir / "pgmp-hidden"
    hidden.mkdir(exist_ok=True)
    moved = [f.rename(hidden / f.name) for f in ext_dir.glob(f"{EXT}*")]
    try:
        proxy = start_proxy("--upstream", database.upstream)  # --extension-mode auto
        with connect(proxy, dbname) as conn:
            assert conn.execute(f"CREATE EXTENSION {EXT}").statusmessage == "CREATE EXTENSION"
            assert conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = %s", (EXT,)
            ).fetchone() == ("1.6",)
            assert conn.execute(
                "SELECT obj_description('google_ml'::regnamespace)"
            ).fetchone()[0].endswith("emulated by pg-model-proxy")
        assert "google_ml_integration: emulated mode" in proxy.log_text()
    finally:
        for f in moved:
            f.rename(ext_dir / f.name)
        hidden.rmdir()


def test_auto_mode_is_native_when_the_server_has_the_files(database, start_proxy, dbname):
    proxy = start_proxy("--upstream", database.upstream)
    with connect(proxy, dbname) as conn:
        conn.execute(f"CREATE EXTENSION {EXT}")
        # A real extension: PostgreSQL's own catalog has it.
        with psycopg.connect(database.direct_dsn(database=dbname)) as direct:
            assert direct.execute(
                "SELECT extversion FROM pg_extension WHERE extname = %s", (EXT,)
            ).fetchone() == ("1.6",)
    assert "google_ml_integration: native mode" in proxy.log_text()


def test_install_extension_command(database, tmp_path):
    import sys

    server = database.require_embedded()
    assert server.bin_dir is not None
    ok = subprocess.run(
        [sys.executable, "-m", "proxy", "install-extension", "--pg-config", str(server.bin_dir / "pg_config")],
        capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"{EXT}.control" in ok.stdout and "CREATE EXTENSION google_ml_integration" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "proxy", "install-extension", "--pg-config", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 1 and "pg-model-proxy install-extension:" in bad.stderr


def test_drop_refuses_while_a_generated_column_uses_embedding(mode_proxy, dbname):
    with connect(mode_proxy, dbname) as conn:
        conn.execute(f"CREATE EXTENSION {EXT}")
        conn.execute(
            "CREATE TABLE docs (content text, emb real[] GENERATED ALWAYS AS (embedding('m', content)) STORED)"
        )
        with pytest.raises(psycopg.errors.DependentObjectsStillExist):
            conn.execute(f"DROP EXTENSION {EXT}")
        assert conn.execute("SELECT to_regprocedure('public.embedding(varchar,text)')").fetchone()[0]
        conn.execute(f"DROP EXTENSION {EXT} CASCADE")
        assert conn.execute("SELECT to_regprocedure('public.embedding(varchar,text)')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'docs' AND column_name = 'emb'"
        ).fetchone() == (0,)
