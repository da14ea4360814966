"""The google_ml_integration extension of sqlfuncs/ in a real PostgreSQL, three ways.

Every test runs straight to the server, through the proxy in native mode, and through the
proxy in emulated mode (where the proxy itself answers CREATE/ALTER/DROP EXTENSION with
the same scripts): the `database` fixture below wraps the suite's server so that every
connection of the module takes the route under test. The extension files are copied into
the server's extension directory, each module-level database gets `CREATE EXTENSION
google_ml_integration`, and the tests drive the SQL API of SPEC sections 1-3 (procedures in named and positional notation,
list_model, model_info_view, built-in support, every validation error with its SQLSTATE,
transactionality, permissions), then the extension's life cycle (versions, upgrade = direct
install, DROP ... CASCADE, pg_dump).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Database
from tests.support import ProxyProcess

SQLFUNCS = Path(__file__).resolve().parents[2] / "sqlfuncs"
EXTENSION = "google_ml_integration"

PRE_REGISTERED = {
    "textembedding-gecko": "text_embedding",
    "text-embedding-gecko@001": "text_embedding",
    "gemini-1.5-pro:generateContent": "generic",
    "gemini-1.5-pro:streamGenerateContent": "generic",
    "gemini-1.0-pro:generateContent": "generic",
}

# SPEC section 2: the columns of google_ml.models, model_info_view and list_model, in order.
COLUMNS = [
    ("model_id", "character varying"),
    ("model_availability", "text"),
    ("model_request_url", "character varying"),
    ("model_provider", "google_ml.model_provider"),
    ("model_type", "google_ml.model_type"),
    ("model_qualified_name", "character varying"),
    ("model_auth_type", "google_ml.auth_type"),
    ("model_auth_id", "character varying"),
    ("header_gen_fn", "character varying"),
    ("input_transform_fn", "character varying"),
    ("output_transform_fn", "character varying"),
    ("input_batch_transform_fn", "character varying"),
    ("output_batch_transform_fn", "character varying"),
]
COLUMN_LIST = ", ".join(f"{name} {type_}" for name, type_ in COLUMNS)
# What langchain-google-alloydb-pg's model manager passes (varchar where the SPEC says text).
LANGCHAIN_COLUMN_LIST = COLUMN_LIST.replace("model_availability text", "model_availability VARCHAR")

VERTEX_IN = "google_ml.vertexai_text_embedding_input_transform"
VERTEX_OUT = "google_ml.vertexai_text_embedding_output_transform"
OPENAI_IN = "google_ml.openai_text_embedding_input_transform"
OPENAI_OUT = "google_ml.openai_text_embedding_output_transform"
ANTHROPIC_HEADERS = "google_ml.anthropic_claude_header_gen_fn"

URL = "https://models.example.com/v1/embed"

# User functions the tests register: the contracts of SPEC section 4, and wrong ones.
USER_FUNCTIONS = """
CREATE FUNCTION public.my_input_transform(model_id varchar(100), input_text text) RETURNS json
    LANGUAGE sql AS $$ SELECT json_build_object('prompt', json_build_array(input_text)) $$;
CREATE FUNCTION public.my_output_transform(model_id varchar(100), response_json json) RETURNS real[]
    LANGUAGE sql AS $$ SELECT ARRAY(SELECT json_array_elements_text(response_json -> 0)::real) $$;
CREATE FUNCTION public.my_header_fn(model_id varchar(100), input_text text) RETURNS json
    LANGUAGE sql AS $$ SELECT json_build_object('version', '2024-01-01') $$;
CREATE FUNCTION public.my_generic_header_fn(model_id text, input json) RETURNS json
    LANGUAGE sql AS $$ SELECT json_build_object('x-api-version', '1') $$;
CREATE FUNCTION public.my_batch_input_transform(model_id varchar(100), input_texts text[]) RETURNS json
    LANGUAGE sql AS $$ SELECT json_build_object('prompt', to_json(input_texts)) $$;
CREATE FUNCTION public.my_batch_output_transform(model_id varchar(100), response_json json) RETURNS real[]
    LANGUAGE sql AS $$ SELECT '{{1,2},{3,4}}'::real[] $$;
CREATE FUNCTION public.wrong_args(x integer) RETURNS json LANGUAGE sql AS $$ SELECT '{}'::json $$;
CREATE FUNCTION public.wrong_return(model_id varchar, input_text text) RETURNS jsonb
    LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE FUNCTION public.setof_fn(model_id varchar, input_text text) RETURNS SETOF json
    LANGUAGE sql AS $$ SELECT '{}'::json $$;
CREATE PROCEDURE public.a_procedure(model_id varchar, input_text text) LANGUAGE sql AS $$ SELECT 1 $$;
CREATE SCHEMA other;
CREATE FUNCTION other."MyTransform"(model_id text, input_text text) RETURNS json
    LANGUAGE sql AS $$ SELECT '{}'::json $$;
"""


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- fixtures ------------------------------------------------------------------------------


class RoutedDatabase:
    """The suite's server, reached directly or through a proxy in a given extension mode."""

    def __init__(self, base: Database, route: str, proxy: ProxyProcess | None) -> None:
        self.base, self.route, self.proxy = base, route, proxy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def direct_dsn(self, user: str | None = None, database: str = "postgres", password: str | None = None) -> str:
        if self.proxy is None:
            return self.base.direct_dsn(user, database, password)
        user = user or self.base.superuser
        if password is None:
            password = self.base.password if user == self.base.superuser else ""
        return self.proxy.dsn(user=user, database=database, password=password)


@pytest.fixture(scope="module", params=["direct", "proxy-native", "proxy-emulated"])
def database(request: pytest.FixtureRequest, database: Database) -> Iterator[RoutedDatabase]:
    """Overrides the suite's fixture: the same server, on the route under test."""
    if request.param == "direct":
        yield RoutedDatabase(database, "direct", None)
        return
    mode = request.param.removeprefix("proxy-")
    proxy = ProxyProcess(
        ["--upstream", database.upstream, "--extension-mode", mode], superuser_password=database.password
    ).start()
    yield RoutedDatabase(database, request.param, proxy)
    proxy.stop()


@pytest.fixture(scope="module")
def extension_files(database: Database) -> Path:
    """Copy sqlfuncs/ into the server's extension directory (idempotent; native install)."""
    server = database.require_embedded()
    assert server.bin_dir is not None
    sharedir = subprocess.run(
        [str(server.bin_dir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    target = Path(sharedir) / "extension"
    sources = [SQLFUNCS / f"{EXTENSION}.control", *sorted(SQLFUNCS.glob(f"{EXTENSION}--*.sql"))]
    for source in sources:
        destination = target / source.name
        if not destination.exists() or destination.read_bytes() != source.read_bytes():
            shutil.copyfile(source, destination)
        destination.chmod(0o644)
    return target


@pytest.fixture(scope="module")
def new_database(database: Database, extension_files: Path) -> Iterator[Callable[..., str]]:
    """Create fresh databases (optionally with the extension); all are dropped at the end."""
    created: list[str] = []

    def create(*setup: str) -> str:
        name = unique("pgmp_sql")
        with psycopg.connect(database.direct_dsn(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        created.append(name)
        if setup:
            with psycopg.connect(database.direct_dsn(database=name), autocommit=True) as c:
                for statement in setup:
                    c.execute(statement)
        return name

    yield create
    with psycopg.connect(database.direct_dsn(), autocommit=True) as admin:
        for name in created:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def dbname(new_database: Callable[..., str]) -> str:
    """The module's database: the extension (default version) and the user functions."""
    return new_database(f"CREATE EXTENSION {EXTENSION}", USER_FUNCTIONS)


@pytest.fixture
def conn(database: Database, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser autocommit connection; models and secrets the test added are removed after."""
    with psycopg.connect(database.direct_dsn(database=dbname), autocommit=True) as c:
        yield c
        c.execute(
            "DELETE FROM google_ml.models WHERE NOT model_id = ANY(%s)", (list(PRE_REGISTERED),)
        )
        c.execute("DELETE FROM google_ml.sm_secrets")


def connect(database: Database, dbname: str, user: str | None = None) -> psycopg.Connection[Any]:
    return psycopg.connect(database.direct_dsn(user=user, database=dbname), autocommit=True)


def expect_error(
    conn: psycopg.Connection[Any], statement: str, sqlstate: str, message: str, params: Any = None
) -> psycopg.Error:
    """Run a statement that must fail with this SQLSTATE and this exact primary message."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement, params)
    error = info.value
    assert (error.sqlstate, error.diag.message_primary) == (sqlstate, message)
    return error


def model(conn: psycopg.Connection[Any], model_id: str) -> dict[str, Any]:
    """The model's row as list_model returns it (with the SPEC's column definition list)."""
    cur = conn.execute(f"SELECT * FROM google_ml.list_model(%s) AS t({COLUMN_LIST})", (model_id,))
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


def model_ids(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT model_id FROM google_ml.models")}


# --- the files -----------------------------------------------------------------------------


def test_generated_install_script_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(SQLFUNCS / "build.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_script_starts_with_the_psql_guard() -> None:
    scripts = sorted(SQLFUNCS.glob(f"{EXTENSION}--*.sql"))
    assert {p.name for p in scripts} == {
        f"{EXTENSION}--1.5.3.sql",
        f"{EXTENSION}--1.5.3--1.6.sql",
        f"{EXTENSION}--1.6.sql",
    }
    for path in scripts:
        first = path.read_text().splitlines()[0]
        if "--1.5.3--" in path.name:
            assert first == f"\\echo Use \"ALTER EXTENSION {EXTENSION} UPDATE TO '1.6'\" to load this file. \\quit"
        else:
            assert first == f'\\echo Use "CREATE EXTENSION {EXTENSION}" to load this file. \\quit'


def test_scripts_never_use_bare_dollar_quotes() -> None:
    """Emulated mode may run a script from inside a client's DO $$ ... $$ body."""
    for path in SQLFUNCS.glob(f"{EXTENSION}--*.sql"):
        assert "$$" not in path.read_text(), path.name


def test_control_file() -> None:
    text = (SQLFUNCS / f"{EXTENSION}.control").read_text()
    settings = dict(re.findall(r"^\s*(\w+)\s*=\s*'?([^'\n]*)'?\s*$", text, re.M))
    assert settings["default_version"] == "1.6"
    assert settings["relocatable"] == "false"
    assert settings["trusted"] == "false"
    assert "module_pathname" not in settings
    assert settings["comment"]


def test_install_script_runs_as_plain_sql_in_a_session(database: Database, new_database: Callable[..., str]) -> None:
    """Emulated mode runs the same script in a client's session: nothing in it needs CREATE EXTENSION
    except pg_extension_config_dump, which stands alone on its own lines for the proxy to skip."""
    text = (SQLFUNCS / f"{EXTENSION}--1.6.sql").read_text()
    dumps = re.findall(r"^SELECT pg_catalog\.pg_extension_config_dump\(.*\);$", text, re.M)
    assert len(dumps) == 2
    plain = "\n".join(
        line for line in text.splitlines() if not line.startswith("\\echo") and line not in dumps
    )
    assert "@extschema@" not in plain
    with connect(database, new_database()) as c, c.transaction(force_rollback=True):
        c.execute(plain)
        assert len(model_ids(c)) == 5


# --- the extension and its catalog ---------------------------------------------------------


def test_extension_version_is_1_6_and_sorts_after_1_5_3(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT extversion, extversion > '1.5.3' COLLATE \"C\", extrelocatable"
        " FROM pg_extension WHERE extname = %s",
        (EXTENSION,),
    ).fetchone()
    assert row == ("1.6", True, False)
    assert "1.6" > "1.5.3"  # how clients compare it
    versions = {r[0] for r in conn.execute(
        "SELECT version FROM pg_available_extension_versions WHERE name = %s", (EXTENSION,))}
    assert versions == {"1.5.3", "1.6"}
    default = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = %s", (EXTENSION,)
    ).fetchone()
    assert default == ("1.6",)


def test_enums(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)"
        " FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid"
        " WHERE t.typnamespace = 'google_ml'::regnamespace GROUP BY t.typname"
    ).fetchall()
    assert dict(rows) == {
        "model_provider": [
            "google", "open_ai", "hugging_face", "anthropic", "custom",
            "azure_openai", "cohere", "amazon_bedrock", "ai21labs", "databricks",
        ],
        "model_type": [
            "text_embedding", "generic", "multimodal_embedding", "reranking", "ts_forecasting", "llm",
        ],
        "auth_type": ["alloydb_service_agent_iam", "secret_manager"],
    }


@pytest.mark.parametrize("relation", ["google_ml.models", "google_ml.model_info_view"])
def test_models_and_view_have_the_13_columns_in_order(conn: psycopg.Connection[Any], relation: str) -> None:
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (relation,),
    ).fetchall()
    assert rows == COLUMNS
    model_id_type = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attname = 'model_id'", (relation,)
    ).fetchone()
    assert model_id_type == ("character varying(100)",)


def test_model_id_is_the_primary_key(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'google_ml.models'::regclass AND contype = 'p'"
    ).fetchone()
    assert row == ("PRIMARY KEY (model_id)",)


def test_secrets_table_holds_a_path_never_a_value(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'google_ml.sm_secrets'::regclass"
        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ).fetchall()
    assert rows == [("secret_id",), ("secret_path",)]


def test_model_info_view_lists_the_pre_registered_models(conn: psycopg.Connection[Any]) -> None:
    cur = conn.execute("SELECT * FROM google_ml.model_info_view")
    assert cur.description is not None
    assert [c.name for c in cur.description] == [name for name, _ in COLUMNS]
    rows = {r[0]: r for r in cur.fetchall()}
    assert {k: v[4] for k, v in rows.items()} == PRE_REGISTERED
    for model_id, row in rows.items():
        assert row[2] == f"publishers/google/models/{model_id}"  # relative: the proxy resolves it
        assert row[3] == "google"
        assert row[5] == model_id
        assert row[6] == "alloydb_service_agent_iam"
        assert row[7] is None and row[8] is None
    assert rows["textembedding-gecko"][9:11] == (VERTEX_IN, VERTEX_OUT)
    assert rows["gemini-1.5-pro:generateContent"][9:11] == (None, None)


def test_builtin_support_list(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT model_provider::text, model_qualified_name, model_type::text FROM google_ml.builtin_models"
    ).fetchall()
    assert sorted(rows) == sorted(
        [("google", name, "text_embedding") for name in (
            "text-embedding-gecko@001", "text-embedding-gecko@003", "text-embedding-004",
            "text-embedding-005", "text-embedding-preview-0815", "text-multilingual-embedding-002",
            "gemini-embedding-001")]
        + [("open_ai", name, "text_embedding") for name in (
            "text-embedding-ada-002", "text-embedding-3-small", "text-embedding-3-large")]
        + [("anthropic", name, "generic") for name in (
            "claude-3-opus-20240229", "claude-3-sonnet-20240229", "claude-3-haiku-20240307")]
    )


def test_functions_are_security_invoker(conn: psycopg.Connection[Any]) -> None:
    definer = conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'google_ml'::regnamespace AND prosecdef"
    ).fetchall()
    assert definer == []


# --- list_model ----------------------------------------------------------------------------


def test_list_model_returns_one_record(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT pg_typeof(google_ml.list_model('textembedding-gecko'))::text, "
        "google_ml.list_model('textembedding-gecko')::text"
    ).fetchone()
    assert row is not None
    assert row[0] == "record"
    assert row[1].startswith("(textembedding-gecko,AVAILABLE,publishers/google/models/textembedding-gecko,google,")
    proc = conn.execute(
        "SELECT prorettype::regtype::text, proretset FROM pg_proc"
        " WHERE oid = 'google_ml.list_model(varchar)'::regprocedure"
    ).fetchone()
    assert proc == ("record", False)


@pytest.mark.parametrize("columns", [COLUMN_LIST, LANGCHAIN_COLUMN_LIST], ids=["spec", "langchain"])
def test_list_model_with_a_column_definition_list(conn: psycopg.Connection[Any], columns: str) -> None:
    cur = conn.execute(f"SELECT * FROM google_ml.list_model('gemini-1.5-pro:generateContent') AS t({columns})")
    assert cur.description is not None
    assert [c.name for c in cur.description] == [name for name, _ in COLUMNS]
    assert cur.fetchall() == [(
        "gemini-1.5-pro:generateContent", "AVAILABLE",
        "publishers/google/models/gemini-1.5-pro:generateContent", "google", "generic",
        "gemini-1.5-pro:generateContent", "alloydb_service_agent_iam",
        None, None, None, None, None, None,
    )]


def test_list_model_in_from_needs_a_column_definition_list(conn: psycopg.Connection[Any]) -> None:
    expect_error(
        conn, "SELECT * FROM google_ml.list_model('textembedding-gecko')", "42601",
        "a column definition list is required for functions returning \"record\"",
    )


# --- create / alter / drop -----------------------------------------------------------------


def test_create_model_named_notation_all_parameters(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_sm_secret(secret_id => 'key1', secret_path => 'projects/p/secrets/s/versions/1')")
    conn.execute(
        """
        CALL google_ml.create_model(
            model_id => 'custom-embedding-model',
            model_request_url => 'https://cymbal.com/models/text/embeddings/v1',
            model_provider => 'custom',
            model_type => 'text_embedding',
            model_qualified_name => 'cymbal-1',
            model_auth_type => 'secret_manager',
            model_auth_id => 'key1',
            generate_headers_fn => 'my_header_fn',
            model_in_transform_fn => 'my_input_transform',
            model_out_transform_fn => 'public.my_output_transform',
            model_batch_in_transform_fn => 'my_batch_input_transform',
            model_batch_out_transform_fn => 'my_batch_output_transform')
        """
    )
    assert model(conn, "custom-embedding-model") == {
        "model_id": "custom-embedding-model",
        "model_availability": "AVAILABLE",
        "model_request_url": "https://cymbal.com/models/text/embeddings/v1",
        "model_provider": "custom",
        "model_type": "text_embedding",
        "model_qualified_name": "cymbal-1",
        "model_auth_type": "secret_manager",
        "model_auth_id": "key1",
        "header_gen_fn": "my_header_fn",
        "input_transform_fn": "my_input_transform",
        "output_transform_fn": "public.my_output_transform",
        "input_batch_transform_fn": "my_batch_input_transform",
        "output_batch_transform_fn": "my_batch_output_transform",
    }


def test_create_model_positional_notation_all_parameters(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_sm_secret('key2', 'projects/p/secrets/s2/versions/3')")
    conn.execute(
        "CALL google_ml.create_model('pos-model', 'http://127.0.0.1:8080/embed', 'hugging_face',"
        " 'text_embedding', 'org/model', 'secret_manager', 'key2', 'my_header_fn',"
        " 'my_input_transform', 'my_output_transform', 'my_batch_input_transform',"
        " 'my_batch_output_transform')"
    )
    row = model(conn, "pos-model")
    assert list(row.values()) == [
        "pos-model", "AVAILABLE", "http://127.0.0.1:8080/embed", "hugging_face", "text_embedding",
        "org/model", "secret_manager", "key2", "my_header_fn", "my_input_transform",
        "my_output_transform", "my_batch_input_transform", "my_batch_output_transform",
    ]


def test_create_model_with_bind_parameters_and_defaults(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CALL google_ml.create_model(model_id => %s, model_request_url => %s)",
        ("bound-model", "https://example.com/predict"),
    )
    row = model(conn, "bound-model")
    assert (row["model_provider"], row["model_type"], row["model_auth_type"]) == ("custom", "generic", None)


def test_generic_models_of_the_seed_documents(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_sm_secret(secret_id => 'hf', secret_path => 'projects/p/secrets/hf/versions/1')")
    conn.execute(
        """CALL google_ml.create_model(
            model_id => 'custom-classification-model',
            model_provider => 'hugging_face',
            model_request_url => 'https://api-inference.huggingface.co/models/facebook/bart-large-mnli',
            model_qualified_name => 'facebook/bart-large-mnli',
            model_auth_type => 'secret_manager',
            model_auth_id => 'hf')"""
    )
    conn.execute(
        """CALL google_ml.create_model(
            model_id => 'anthropic-opus',
            model_provider => 'anthropic',
            model_request_url => 'https://api.anthropic.com/v1/messages',
            generate_headers_fn => 'google_ml.anthropic_claude_header_gen_fn')"""
    )
    assert model(conn, "custom-classification-model")["model_type"] == "generic"
    opus = model(conn, "anthropic-opus")
    assert (opus["model_type"], opus["header_gen_fn"], opus["model_auth_type"]) == ("generic", ANTHROPIC_HEADERS, None)


def test_create_alter_list_drop_round_trip(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_model('rt', 'https://a.example.com/x', 'custom', 'text_embedding')")
    conn.execute("CALL google_ml.create_sm_secret('rt-key', 'projects/p/secrets/rt/versions/1')")
    conn.execute(
        "CALL google_ml.alter_model(model_id => 'rt', model_request_url => 'https://b.example.com/y',"
        " model_auth_id => 'rt-key', model_in_transform_fn => 'my_input_transform')"
    )
    row = model(conn, "rt")
    assert (row["model_request_url"], row["model_auth_type"], row["model_auth_id"], row["input_transform_fn"]) == (
        "https://b.example.com/y", "secret_manager", "rt-key", "my_input_transform")
    assert row["model_type"] == "text_embedding"  # not given: unchanged
    conn.execute("CALL google_ml.alter_model('rt', NULL, 'hugging_face', NULL, 'q/n')")
    row = model(conn, "rt")
    assert (row["model_provider"], row["model_qualified_name"], row["model_request_url"]) == (
        "hugging_face", "q/n", "https://b.example.com/y")
    conn.execute("CALL google_ml.drop_model('rt')")
    assert "rt" not in model_ids(conn)
    conn.execute("CALL google_ml.drop_sm_secret('rt-key')")


def test_alter_model_empty_string_clears_an_optional_field(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_sm_secret('c-key', 'projects/p/secrets/c/versions/1')")
    conn.execute(
        "CALL google_ml.create_model(model_id => 'clear-me', model_request_url => 'https://x.example.com',"
        " model_type => 'text_embedding', model_auth_id => 'c-key', generate_headers_fn => 'my_header_fn',"
        " model_in_transform_fn => 'my_input_transform')"
    )
    conn.execute(
        "CALL google_ml.alter_model(model_id => 'clear-me', model_auth_type => '', model_auth_id => '',"
        " generate_headers_fn => '', model_in_transform_fn => '')"
    )
    row = model(conn, "clear-me")
    assert (row["model_auth_type"], row["model_auth_id"], row["header_gen_fn"], row["input_transform_fn"]) == (
        None, None, None, None)
    conn.execute("CALL google_ml.alter_model(model_id => 'clear-me', model_type => 'generic')")
    assert model(conn, "clear-me")["model_type"] == "generic"
    conn.execute("CALL google_ml.drop_sm_secret('c-key')")  # no longer used


def test_drop_model_named_notation(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_model(model_id => 'gone', model_request_url => 'https://x.example.com')")
    conn.execute("CALL google_ml.drop_model(model_id => 'gone')")
    assert "gone" not in model_ids(conn)


def test_pre_registered_model_can_be_altered_and_dropped(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute("CALL google_ml.alter_model('textembedding-gecko', 'projects/p/locations/europe-west1/publishers/google/models/textembedding-gecko')")
        assert model(conn, "textembedding-gecko")["model_request_url"].startswith("projects/p/")
        conn.execute("CALL google_ml.drop_model('gemini-1.0-pro:generateContent')")
        assert "gemini-1.0-pro:generateContent" not in model_ids(conn)
    assert model_ids(conn) == set(PRE_REGISTERED)


# --- built-in support ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "name", "type_", "url", "fns"),
    [
        ("google", "text-embedding-005", "text_embedding", "publishers/google/models/text-embedding-005", (None, VERTEX_IN, VERTEX_OUT)),
        ("google", "gemini-embedding-001", "text_embedding", "publishers/google/models/gemini-embedding-001", (None, VERTEX_IN, VERTEX_OUT)),
        ("google", "text-multilingual-embedding-002", "text_embedding", "publishers/google/models/text-multilingual-embedding-002", (None, VERTEX_IN, VERTEX_OUT)),
        ("open_ai", "text-embedding-ada-002", "text_embedding", "https://api.openai.com/v1/embeddings", (None, OPENAI_IN, OPENAI_OUT)),
        ("open_ai", "text-embedding-3-large", "text_embedding", "https://api.openai.com/v1/embeddings", (None, OPENAI_IN, OPENAI_OUT)),
        ("anthropic", "claude-3-haiku-20240307", "generic", "https://api.anthropic.com/v1/messages", (ANTHROPIC_HEADERS, None, None)),
    ],
)
def test_builtin_model_needs_only_id_provider_and_qualified_name(
    conn: psycopg.Connection[Any], provider: str, name: str, type_: str, url: str, fns: tuple[str | None, ...]
) -> None:
    conn.execute(
        "CALL google_ml.create_model(model_id => 'b', model_provider => %s, model_qualified_name => %s)",
        (provider, name),
    )
    row = model(conn, "b")
    assert (row["model_type"], row["model_request_url"]) == (type_, url)
    assert (row["header_gen_fn"], row["input_transform_fn"], row["output_transform_fn"]) == fns


def test_builtin_model_with_explicit_url_still_gets_its_transforms(conn: psycopg.Connection[Any]) -> None:
    """The seed's text-embedding-005 example: URL given, transforms filled in."""
    conn.execute(
        """CALL google_ml.create_model(
            model_id => 'text-embedding-005',
            model_request_url => 'publishers/google/models/text-embedding-005',
            model_provider => 'google',
            model_qualified_name => 'text-embedding-005',
            model_type => 'text_embedding',
            model_auth_type => 'alloydb_service_agent_iam')"""
    )
    row = model(conn, "text-embedding-005")
    assert (row["input_transform_fn"], row["output_transform_fn"], row["model_auth_type"]) == (
        VERTEX_IN, VERTEX_OUT, "alloydb_service_agent_iam")


def test_openai_builtin_model_of_the_seed_document(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_sm_secret('openai-key', 'projects/p/secrets/openai/versions/1')")
    conn.execute(
        """CALL google_ml.create_model(
            model_id => 'ada',
            model_provider => 'open_ai',
            model_type => 'text_embedding',
            model_qualified_name => 'text-embedding-ada-002',
            model_auth_type => 'secret_manager',
            model_auth_id => 'openai-key')"""
    )
    row = model(conn, "ada")
    assert (row["model_request_url"], row["input_transform_fn"], row["model_auth_id"]) == (
        "https://api.openai.com/v1/embeddings", OPENAI_IN, "openai-key")


def test_explicit_functions_win_over_builtin_ones(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CALL google_ml.create_model(model_id => 'mine', model_provider => 'google',"
        " model_qualified_name => 'text-embedding-004', model_in_transform_fn => 'my_input_transform')"
    )
    row = model(conn, "mine")
    assert (row["input_transform_fn"], row["output_transform_fn"]) == ("my_input_transform", VERTEX_OUT)


def test_other_vertex_models_get_a_publisher_url(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CALL google_ml.create_model(model_id => 'flash', model_provider => 'google',"
        " model_qualified_name => 'gemini-2.0-flash-001:generateContent')"
    )
    row = model(conn, "flash")
    assert (row["model_type"], row["model_request_url"], row["input_transform_fn"]) == (
        "generic", "publishers/google/models/gemini-2.0-flash-001:generateContent", None)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("'google', 'text_embedding', 'text-embedding-005'", "publishers/google/models/text-embedding-005"),
        ("'google', 'text_embedding', 'text-embedding-005', 'europe-west1'",
         "locations/europe-west1/publishers/google/models/text-embedding-005"),
        ("provider => 'google', model_type => 'generic', model_qualified_name => 'gemini-1.5-pro:generateContent'",
         "publishers/google/models/gemini-1.5-pro:generateContent"),
        ("'open_ai', 'text_embedding', 'text-embedding-3-small'", "https://api.openai.com/v1/embeddings"),
        ("'open_ai', 'text_embedding', 'text-embedding-3-small', 'us-central1'", "https://api.openai.com/v1/embeddings"),
        ("'anthropic', 'generic', 'claude-3-opus-20240229'", "https://api.anthropic.com/v1/messages"),
        ("'anthropic', 'text_embedding', 'claude-3-opus-20240229'", None),
        ("'open_ai', 'text_embedding', 'not-a-model'", None),
        ("'custom', 'generic', 'anything'", None),
    ],
)
def test_generate_model_request_url(conn: psycopg.Connection[Any], args: str, expected: str | None) -> None:
    row = conn.execute(f"SELECT google_ml.generate_model_request_url({args})").fetchone()
    assert row == (expected,)


def test_generate_model_request_url_rejects_a_bad_region(conn: psycopg.Connection[Any]) -> None:
    expect_error(
        conn, "SELECT google_ml.generate_model_request_url('google', 'text_embedding', 'text-embedding-004', 'x/../y')",
        "22023", "Invalid model_region: x/../y",
    )


def test_model_qualified_name_of(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_model('q', 'https://x.example.com', model_qualified_name => 'org/name-7')")
    rows = conn.execute(
        "SELECT google_ml.model_qualified_name_of('q'), google_ml.model_qualified_name_of(model_id => 'textembedding-gecko')"
    ).fetchone()
    assert rows == ("org/name-7", "textembedding-gecko")
    expect_error(conn, "SELECT google_ml.model_qualified_name_of('nope')", "42704", "Model does not exist for model_id: nope")


# --- built-in transform and header functions -----------------------------------------------


def test_vertex_transforms(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        f"SELECT {VERTEX_IN}('textembedding-gecko', 'AlloyDB is')::text,"
        f" {VERTEX_OUT}('textembedding-gecko', '{{\"predictions\": [{{\"embeddings\": {{\"values\": [0.5, -1, 2]}}}}]}}')"
    ).fetchone()
    assert row == ('{"instances" : [{"content" : "AlloyDB is"}]}', [0.5, -1.0, 2.0])
    expect_error(
        conn, f"SELECT {VERTEX_OUT}('m', '{{\"error\": 1}}')", "22000",
        "Unexpected response of model m: no predictions[0].embeddings.values",
    )


def test_openai_transforms_use_the_qualified_name(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_model('small', model_provider => 'open_ai', model_qualified_name => 'text-embedding-3-small')")
    row = conn.execute(
        f"SELECT {OPENAI_IN}('small', 'hi')::text,"
        f" {OPENAI_OUT}('small', '{{\"data\": [{{\"index\": 0, \"embedding\": [1, 2.5]}}]}}')"
    ).fetchone()
    assert row == ('{"model" : "text-embedding-3-small", "input" : ["hi"]}', [1.0, 2.5])
    expect_error(conn, f"SELECT {OPENAI_IN}('nope', 'hi')", "42704", "Model does not exist for model_id: nope")


def test_anthropic_header_function_returns_the_version_only(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(f"SELECT {ANTHROPIC_HEADERS}('opus', '{{\"messages\": []}}')::text").fetchone()
    assert row == ('{"anthropic-version" : "2023-06-01"}',)


def test_builtin_function_signatures(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)"
        " FROM pg_proc p WHERE p.pronamespace = 'google_ml'::regnamespace"
        " AND p.proname IN ('vertexai_text_embedding_input_transform', 'vertexai_text_embedding_output_transform',"
        " 'openai_text_embedding_input_transform', 'openai_text_embedding_output_transform',"
        " 'anthropic_claude_header_gen_fn')"
    ).fetchall()
    assert sorted(rows) == [
        ("anthropic_claude_header_gen_fn", "model_id character varying, input json", "json"),
        ("openai_text_embedding_input_transform", "model_id character varying, input_text text", "json"),
        ("openai_text_embedding_output_transform", "model_id character varying, response_json json", "real[]"),
        ("vertexai_text_embedding_input_transform", "model_id character varying, input_text text", "json"),
        ("vertexai_text_embedding_output_transform", "model_id character varying, response_json json", "real[]"),
    ]


# --- secrets ---------------------------------------------------------------------------------


def test_secret_round_trip_named_and_positional(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_sm_secret(secret_id => 's1', secret_path => 'projects/p/secrets/a/versions/1')")
    conn.execute("CALL google_ml.create_sm_secret('s2', 'projects/p/secrets/b/versions/1')")
    conn.execute("CALL google_ml.alter_sm_secret(secret_id => 's1', secret_path => 'projects/p/secrets/a/versions/2')")
    conn.execute("CALL google_ml.alter_sm_secret('s2', 'projects/p/secrets/b/versions/9')")
    rows = conn.execute("SELECT * FROM google_ml.sm_secrets ORDER BY 1").fetchall()
    assert rows == [("s1", "projects/p/secrets/a/versions/2"), ("s2", "projects/p/secrets/b/versions/9")]
    conn.execute("CALL google_ml.drop_sm_secret(secret_id => 's1')")
    conn.execute("CALL google_ml.drop_sm_secret('s2')")
    assert conn.execute("SELECT count(*) FROM google_ml.sm_secrets").fetchone() == (0,)


# --- validation errors -----------------------------------------------------------------------


TOO_LONG = "m" * 101


@pytest.mark.parametrize(
    ("statement", "sqlstate", "message"),
    [
        # ids
        ("CALL google_ml.create_model(NULL, 'https://x.example.com')", "22004", "model_id cannot be NULL"),
        ("CALL google_ml.create_model('', 'https://x.example.com')", "22023", "model_id cannot be empty"),
        ("CALL google_ml.create_model('  ', 'https://x.example.com')", "22023", "model_id cannot be empty"),
        (f"CALL google_ml.create_model('{TOO_LONG}', 'https://x.example.com')", "22001",
         "model_id is too long: 101 characters, at most 100"),
        ("CALL google_ml.alter_model(NULL)", "22004", "model_id cannot be NULL"),
        ("CALL google_ml.drop_model('')", "22023", "model_id cannot be empty"),
        ("SELECT google_ml.list_model(NULL)", "22004", "model_id cannot be NULL"),
        (f"SELECT google_ml.list_model('{TOO_LONG}')", "22001", "model_id is too long: 101 characters, at most 100"),
        ("CALL google_ml.create_sm_secret(NULL, 'projects/p/secrets/s/versions/1')", "22004", "secret_id cannot be NULL"),
        ("CALL google_ml.create_sm_secret('', 'projects/p/secrets/s/versions/1')", "22023", "secret_id cannot be empty"),
        (f"CALL google_ml.create_sm_secret('{TOO_LONG}', 'p')", "22001", "secret_id is too long: 101 characters, at most 100"),
        ("CALL google_ml.create_sm_secret('k', NULL)", "22004", "secret_path cannot be NULL"),
        ("CALL google_ml.create_sm_secret('k', '')", "22023", "secret_path cannot be empty"),
        # unknown model / secret
        ("CALL google_ml.alter_model('nope', 'https://x.example.com')", "42704", "Model does not exist for model_id: nope"),
        ("CALL google_ml.drop_model('nope')", "42704", "Model does not exist for model_id: nope"),
        ("SELECT google_ml.list_model('nope')", "42704", "Model does not exist for model_id: nope"),
        ("SELECT google_ml.list_model('TextEmbedding-Gecko')", "42704", "Model does not exist for model_id: TextEmbedding-Gecko"),
        ("CALL google_ml.alter_sm_secret('nope', 'p')", "42704", "Secret does not exist for secret_id: nope"),
        ("CALL google_ml.drop_sm_secret('nope')", "42704", "Secret does not exist for secret_id: nope"),
        # duplicates
        ("CALL google_ml.create_model('textembedding-gecko', 'https://x.example.com')", "23505",
         "Model already exists for model_id: textembedding-gecko"),
        # provider, type, auth type
        ("CALL google_ml.create_model('m', 'https://x.example.com', 'openai')", "22023", "Invalid model_provider: openai"),
        ("CALL google_ml.create_model('m', 'https://x.example.com', model_type => 'embedding')", "22023",
         "Invalid model_type: embedding"),
        ("CALL google_ml.create_model('m', 'https://x.example.com', model_auth_type => 'api_key')", "22023",
         "Invalid model_auth_type: api_key"),
        ("CALL google_ml.alter_model('textembedding-gecko', model_provider => 'vertex')", "22023",
         "Invalid model_provider: vertex"),
        ("SELECT google_ml.generate_model_request_url('vertex', 'generic', 'x')", "22P02",
         'invalid input value for enum google_ml.model_provider: "vertex"'),
        # URLs
        ("CALL google_ml.create_model('m', 'ftp://x.example.com/model')", "22023", "Invalid model_request_url: ftp://x.example.com/model"),
        ("CALL google_ml.create_model('m', 'file:///etc/passwd')", "22023", "Invalid model_request_url: file:///etc/passwd"),
        ("CALL google_ml.create_model('m', 'x.example.com/model')", "22023", "Invalid model_request_url: x.example.com/model"),
        ("CALL google_ml.create_model('m', 'publishers/google/models/x')", "22023",
         "Invalid model_request_url: publishers/google/models/x"),  # relative: Vertex AI (google) only
        ("CALL google_ml.create_model('m', 'https:///path')", "22023", "Invalid model_request_url: https:///path"),
        ("CALL google_ml.create_model('m', 'https://x.example.com/a b')", "22023", "Invalid model_request_url: https://x.example.com/a b"),
        ("CALL google_ml.create_model('m', model_provider => 'hugging_face', model_qualified_name => 'org/x')", "22023",
         "model_request_url is required for model_id: m"),
        ("CALL google_ml.alter_model('textembedding-gecko', model_request_url => '')", "22023",
         "model_request_url is required for model_id: textembedding-gecko"),
        ("CALL google_ml.alter_model('textembedding-gecko', model_request_url => 'gs://bucket/x')", "22023",
         "Invalid model_request_url: gs://bucket/x"),
        # provider open_ai: api.openai.com only (loopback aside)
        ("CALL google_ml.create_model('m', 'https://evil.example.com/v1/embeddings', 'open_ai', 'text_embedding', 'text-embedding-3-small')",
         "22023", "Invalid model_request_url: https://evil.example.com/v1/embeddings"),
        ("CALL google_ml.create_model('m', 'https://api.openai.com.evil.example/v1/embeddings', 'open_ai')",
         "22023", "Invalid model_request_url: https://api.openai.com.evil.example/v1/embeddings"),
        ("CALL google_ml.create_model('m', 'https://api.openai.com@evil.example/v1/embeddings', 'open_ai')",
         "22023", "Invalid model_request_url: https://api.openai.com@evil.example/v1/embeddings"),
        ("CALL google_ml.create_model('m', model_provider => 'open_ai', model_request_url => 'https://myresource.openai.azure.com/openai/deployments/d/embeddings')",
         "22023", "Invalid model_request_url: https://myresource.openai.azure.com/openai/deployments/d/embeddings"),
        # transform functions for a generic model
        ("CALL google_ml.create_model('m', 'https://x.example.com', model_in_transform_fn => 'my_input_transform')", "22023",
         "Transform functions are not supported for generic models: model_in_transform_fn given for model_id: m"),
        ("CALL google_ml.create_model('m', 'https://x.example.com', model_type => 'generic', model_out_transform_fn => 'my_output_transform')",
         "22023", "Transform functions are not supported for generic models: model_out_transform_fn given for model_id: m"),
        ("CALL google_ml.create_model('m', 'https://x.example.com', model_batch_in_transform_fn => 'my_batch_input_transform')",
         "22023", "Transform functions are not supported for generic models: model_batch_in_transform_fn given for model_id: m"),
        ("CALL google_ml.create_model(model_id => 'm', model_provider => 'anthropic', model_qualified_name => 'claude-3-opus-20240229', model_in_transform_fn => 'my_input_transform')",
         "22023", "Transform functions are not supported for generic models: model_in_transform_fn given for model_id: m"),
        ("CALL google_ml.alter_model('textembedding-gecko', model_type => 'generic')", "22023",
         "Transform functions are not supported for generic models: model_in_transform_fn given for model_id: textembedding-gecko"),
        ("CALL google_ml.create_model('m', 'https://x.example.com', model_type => 'reranking', model_in_transform_fn => 'my_input_transform')",
         "22023", "Transform functions are not supported for reranking models: model_in_transform_fn given for model_id: m"),
        # auth
        ("CALL google_ml.create_model('m', 'https://x.example.com', model_auth_id => 'no-such-secret')", "42704",
         "Invalid model_auth_id: no-such-secret"),
        ("CALL google_ml.create_model('m', 'https://x.example.com', model_auth_type => 'secret_manager')", "22023",
         "model_auth_id is required when model_auth_type is secret_manager (model_id: m)"),
        ("CALL google_ml.alter_model('textembedding-gecko', model_auth_id => 'no-such-secret')", "22023",
         "model_auth_id is only used with model_auth_type secret_manager, not alloydb_service_agent_iam (model_id: textembedding-gecko)"),
    ],
)
def test_validation_error(conn: psycopg.Connection[Any], statement: str, sqlstate: str, message: str) -> None:
    before = conn.execute("SELECT count(*), string_agg(m::text, ',' ORDER BY model_id) FROM google_ml.models m").fetchone()
    expect_error(conn, statement, sqlstate, message)
    after = conn.execute("SELECT count(*), string_agg(m::text, ',' ORDER BY model_id) FROM google_ml.models m").fetchone()
    assert after == before  # nothing half-created or half-changed


def test_open_ai_error_explains_the_rule(conn: psycopg.Connection[Any]) -> None:
    error = expect_error(
        conn, "CALL google_ml.create_model('m', 'https://evil.example.com/v1/embeddings', 'open_ai')",
        "22023", "Invalid model_request_url: https://evil.example.com/v1/embeddings",
    )
    assert error.diag.message_detail == "Provider open_ai calls api.openai.com, not evil.example.com."
    assert error.diag.message_hint is not None and "custom" in error.diag.message_hint


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1/embeddings",
        "https://API.OpenAI.com:443/v1/embeddings",
        "http://127.0.0.1:18080/v1/embeddings",
        "http://localhost:9999/v1/embeddings",
        "http://[::1]:8000/v1/embeddings",
    ],
)
def test_open_ai_accepts_api_openai_com_and_loopback(conn: psycopg.Connection[Any], url: str) -> None:
    conn.execute(
        "CALL google_ml.create_model(model_id => 'oa', model_provider => 'open_ai', model_request_url => %s,"
        " model_qualified_name => 'text-embedding-3-small')",
        (url,),
    )
    row = model(conn, "oa")
    assert (row["model_request_url"], row["input_transform_fn"]) == (url, OPENAI_IN)


@pytest.mark.parametrize(
    "url",
    [
        "publishers/google/models/text-embedding-004",
        "projects/my-project/locations/us-central1/publishers/google/models/text-embedding-004",
        "projects/my-project/locations/us-central1/endpoints/1234567890",
        "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/publishers/google/models/text-embedding-004:predict",
    ],
)
def test_google_accepts_vertex_resource_paths(conn: psycopg.Connection[Any], url: str) -> None:
    conn.execute("CALL google_ml.create_model('v', %s, 'google')", (url,))
    assert model(conn, "v")["model_request_url"] == url


@pytest.mark.parametrize(
    "param",
    ["generate_headers_fn", "model_in_transform_fn", "model_out_transform_fn",
     "model_batch_in_transform_fn", "model_batch_out_transform_fn"],
)
@pytest.mark.parametrize("name", ["no_such_fn", "public.no_such_fn", "no_such_schema.f", "a.b.c", "f(x)"])
def test_function_that_does_not_exist(conn: psycopg.Connection[Any], param: str, name: str) -> None:
    expect_error(
        conn,
        f"CALL google_ml.create_model(model_id => 'm', model_request_url => 'https://x.example.com',"
        f" model_type => 'text_embedding', {param} => %s)",
        "42883", f"Invalid {param}: {name}", (name,),
    )
    assert "m" not in model_ids(conn)


@pytest.mark.parametrize(
    ("model_type", "param", "name"),
    [
        ("text_embedding", "model_in_transform_fn", "wrong_args"),
        ("text_embedding", "model_in_transform_fn", "wrong_return"),
        ("text_embedding", "model_in_transform_fn", "setof_fn"),
        ("text_embedding", "model_in_transform_fn", "a_procedure"),
        ("text_embedding", "model_in_transform_fn", "my_output_transform"),
        ("text_embedding", "model_out_transform_fn", "my_input_transform"),
        ("text_embedding", "model_batch_in_transform_fn", "my_input_transform"),
        ("text_embedding", "model_batch_out_transform_fn", "my_input_transform"),
        ("text_embedding", "generate_headers_fn", "my_generic_header_fn"),
        ("generic", "generate_headers_fn", "my_header_fn"),
        ("generic", "generate_headers_fn", "wrong_return"),
    ],
)
def test_function_with_the_wrong_signature(conn: psycopg.Connection[Any], model_type: str, param: str, name: str) -> None:
    error = expect_error(
        conn,
        f"CALL google_ml.create_model(model_id => 'm', model_request_url => 'https://x.example.com',"
        f" model_type => '{model_type}', {param} => '{name}')",
        "42804", f"Invalid {param}: {name}",
    )
    assert error.diag.message_detail is not None and error.diag.message_detail.startswith(f"Expected {name}(model_id")


def test_functions_are_resolved_like_calls(conn: psycopg.Connection[Any]) -> None:
    """Schema-qualified, quoted, and through the caller's search_path."""
    conn.execute(
        """CALL google_ml.create_model(model_id => 'quoted', model_request_url => 'https://x.example.com',
           model_type => 'text_embedding', model_in_transform_fn => 'other."MyTransform"')"""
    )
    expect_error(
        conn,
        "CALL google_ml.create_model('m', 'https://x.example.com', model_type => 'text_embedding', model_in_transform_fn => 'MyTransform')",
        "42883", "Invalid model_in_transform_fn: MyTransform",
    )
    conn.execute("SET search_path = other, public")
    conn.execute(
        """CALL google_ml.create_model(model_id => 'via-path', model_request_url => 'https://x.example.com',
           model_type => 'text_embedding', model_in_transform_fn => '"MyTransform"')"""
    )
    conn.execute("RESET search_path")
    assert model(conn, "via-path")["input_transform_fn"] == '"MyTransform"'


def test_missing_request_url_says_why(conn: psycopg.Connection[Any]) -> None:
    error = expect_error(
        conn, "CALL google_ml.create_model('m', model_provider => 'open_ai', model_qualified_name => 'gpt-4o')",
        "22023", "model_request_url is required for model_id: m",
    )
    assert error.diag.message_detail == "Provider open_ai has no built-in generic model with qualified name gpt-4o."
    error = expect_error(conn, "CALL google_ml.create_model('m')", "22023", "model_request_url is required for model_id: m")
    assert error.diag.message_detail == "No model_request_url and no model_qualified_name were given."


def test_duplicate_secret(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_sm_secret('dup', 'projects/p/secrets/d/versions/1')")
    expect_error(conn, "CALL google_ml.create_sm_secret('dup', 'projects/p/secrets/d/versions/2')", "23505",
                 "Secret already exists for secret_id: dup")


def test_duplicate_model(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_model('twice', 'https://x.example.com')")
    error = expect_error(conn, "CALL google_ml.create_model('twice', 'https://y.example.com')", "23505",
                         "Model already exists for model_id: twice")
    assert error.diag.message_hint is not None
    assert model(conn, "twice")["model_request_url"] == "https://x.example.com"


def test_secret_used_by_a_model_cannot_be_dropped(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_sm_secret('used', 'projects/p/secrets/u/versions/1')")
    conn.execute("CALL google_ml.create_model('user-b', 'https://x.example.com', model_auth_id => 'used')")
    conn.execute("CALL google_ml.create_model('user-a', 'https://x.example.com', model_auth_id => 'used')")
    expect_error(conn, "CALL google_ml.drop_sm_secret('used')", "2BP01", "Secret used is still used by model_id: user-a, user-b")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):  # even behind the procedures' back
        conn.execute("DELETE FROM google_ml.sm_secrets WHERE secret_id = 'used'")
    conn.execute("CALL google_ml.drop_model('user-a')")
    conn.execute("CALL google_ml.alter_model('user-b', model_auth_id => '', model_auth_type => '')")
    conn.execute("CALL google_ml.drop_sm_secret('used')")


# --- transactionality ----------------------------------------------------------------------


def test_an_error_in_a_transaction_leaves_nothing(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.UndefinedFunction), conn.transaction():
        conn.execute("CALL google_ml.create_sm_secret('tx-key', 'projects/p/secrets/t/versions/1')")
        conn.execute("CALL google_ml.create_model('tx-1', 'https://x.example.com', model_auth_id => 'tx-key')")
        conn.execute("CALL google_ml.create_model('tx-2', 'https://x.example.com', model_type => 'text_embedding', model_out_transform_fn => 'missing')")
    assert model_ids(conn) == set(PRE_REGISTERED)
    assert conn.execute("SELECT count(*) FROM google_ml.sm_secrets").fetchone() == (0,)


def test_a_failed_alter_changes_nothing(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CALL google_ml.create_model('keep', 'https://x.example.com', model_type => 'text_embedding')")
    before = model(conn, "keep")
    expect_error(
        conn,
        "CALL google_ml.alter_model('keep', model_request_url => 'https://y.example.com', model_qualified_name => 'n',"
        " model_in_transform_fn => 'missing')",
        "42883", "Invalid model_in_transform_fn: missing",
    )
    assert model(conn, "keep") == before


# --- permissions ---------------------------------------------------------------------------


@pytest.fixture
def role(database: Database, dbname: str) -> Iterator[str]:
    """A login role with no privileges on google_ml's tables (dropped afterwards)."""
    name = unique("pgmp_sql_role")
    with connect(database, dbname) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    with connect(database, dbname) as admin:
        admin.execute(f"DROP OWNED BY {name}")
        admin.execute(f"DROP ROLE {name}")


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        ("CALL google_ml.create_model('nope-perm', 'https://x.example.com')", "models"),
        ("CALL google_ml.alter_model('textembedding-gecko', 'https://x.example.com')", "models"),
        ("CALL google_ml.drop_model('textembedding-gecko')", "models"),
        ("SELECT * FROM google_ml.models", "models"),
        ("SELECT * FROM google_ml.model_info_view", "model_info_view"),
        ("SELECT google_ml.list_model('textembedding-gecko')", "models"),
        ("SELECT google_ml.model_qualified_name_of('textembedding-gecko')", "models"),
        ("CALL google_ml.create_sm_secret('s', 'projects/p/secrets/s/versions/1')", "sm_secrets"),
        ("SELECT * FROM google_ml.sm_secrets", "sm_secrets"),
    ],
)
def test_role_without_grants_gets_a_permission_error(
    database: Database, dbname: str, role: str, statement: str, table: str
) -> None:
    with connect(database, dbname, user=role) as c:
        expect_error(c, statement, "42501", f"permission denied for {'view' if table.endswith('view') else 'table'} {table}")


def test_role_without_grants_may_read_the_builtin_list(database: Database, dbname: str, role: str) -> None:
    with connect(database, dbname, user=role) as c:
        assert c.execute("SELECT count(*) > 0 FROM google_ml.builtin_models").fetchone() == (True,)
        url = c.execute("SELECT google_ml.generate_model_request_url('open_ai', 'text_embedding', 'text-embedding-3-small')").fetchone()
        assert url == ("https://api.openai.com/v1/embeddings",)


def test_granted_role_can_manage_models(conn: psycopg.Connection[Any], database: Database, dbname: str, role: str) -> None:
    conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA google_ml TO {role}")
    with connect(database, dbname, user=role) as c:
        c.execute("CALL google_ml.create_sm_secret('role-key', 'projects/p/secrets/r/versions/1')")
        c.execute("CALL google_ml.create_model(model_id => 'role-model', model_provider => 'open_ai',"
                  " model_qualified_name => 'text-embedding-3-small', model_auth_id => 'role-key')")
        c.execute("CALL google_ml.alter_model(model_id => 'role-model', model_qualified_name => 'text-embedding-3-large')")
        assert model(c, "role-model")["model_qualified_name"] == "text-embedding-3-large"
        assert c.execute("SELECT count(*) FROM google_ml.model_info_view").fetchone() == (6,)
        assert c.execute("SELECT google_ml.model_qualified_name_of('role-model')").fetchone() == ("text-embedding-3-large",)
        c.execute("CALL google_ml.drop_model('role-model')")
        c.execute("CALL google_ml.drop_sm_secret('role-key')")
    assert model_ids(conn) == set(PRE_REGISTERED)


# --- life cycle (each in a database of its own) ----------------------------------------------


def catalog(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """What an install leaves in the database, OIDs aside."""
    queries = {
        "functions": """SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid),
                               obj_description(p.oid, 'pg_proc'), p.proacl::text
                        FROM pg_proc p WHERE p.pronamespace = 'google_ml'::regnamespace ORDER BY 1""",
        "enums": """SELECT t.typname, e.enumsortorder, e.enumlabel FROM pg_enum e
                    JOIN pg_type t ON t.oid = e.enumtypid WHERE t.typnamespace = 'google_ml'::regnamespace
                    ORDER BY 1, 2""",
        "types": """SELECT t.typname, t.typtype, obj_description(t.oid, 'pg_type') FROM pg_type t
                    WHERE t.typnamespace = 'google_ml'::regnamespace ORDER BY 1""",
        "relations": """SELECT c.relname, c.relkind, c.relacl::text, c.reloptions::text,
                               obj_description(c.oid, 'pg_class'),
                               CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END
                        FROM pg_class c WHERE c.relnamespace = 'google_ml'::regnamespace ORDER BY 1""",
        "columns": """SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                             a.attnotnull, pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
                      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                      WHERE c.relnamespace = 'google_ml'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
                      ORDER BY 1, 2""",
        "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
                          WHERE connamespace = 'google_ml'::regnamespace ORDER BY 1, 2""",
        "schema": """SELECT nspname, nspacl::text, obj_description(oid, 'pg_namespace') FROM pg_namespace
                     WHERE nspname = 'google_ml'""",
        "members": """SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
                      JOIN pg_extension e ON e.oid = d.refobjid
                      WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                        AND e.extname = 'google_ml_integration' ORDER BY 1""",
        "config": """SELECT extconfig::regclass[]::text, extcondition::text FROM pg_extension
                     WHERE extname = 'google_ml_integration'""",
        "init_privs": """SELECT pg_describe_object(classoid, objoid, objsubid), privtype, initprivs::text
                         FROM pg_init_privs WHERE objoid IN (
                           SELECT oid FROM pg_class WHERE relnamespace = 'google_ml'::regnamespace
                           UNION ALL SELECT oid FROM pg_proc WHERE pronamespace = 'google_ml'::regnamespace
                           UNION ALL SELECT 'google_ml'::regnamespace::oid) ORDER BY 1, 2""",
        "models": "SELECT m::text FROM google_ml.models m ORDER BY model_id",
        "builtin_models": "SELECT b::text FROM google_ml.builtin_models b ORDER BY 1",
        "sm_secrets": "SELECT s::text FROM google_ml.sm_secrets s ORDER BY 1",
    }
    return {name: conn.execute(query).fetchall() for name, query in queries.items()}


def extversion(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = %s", (EXTENSION,)).fetchone()
    return row[0] if row else None


def test_create_extension_twice(database: Database, new_database: Callable[..., str]) -> None:
    notices: list[str] = []
    with connect(database, new_database()) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute(f"CREATE EXTENSION {EXTENSION}")
        expect_error(c, f"CREATE EXTENSION {EXTENSION}", "42710", f'extension "{EXTENSION}" already exists')
        c.execute(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}")
        assert notices == [f'extension "{EXTENSION}" already exists, skipping']
        c.execute(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION} CASCADE")
        assert extversion(c) == "1.6"


def test_create_extension_version_and_cascade(database: Database, new_database: Callable[..., str]) -> None:
    with connect(database, new_database()) as c:
        c.execute(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION} VERSION '1.6' CASCADE")
        assert extversion(c) == "1.6"
        assert len(model_ids(c)) == 5


def test_version_1_5_3_lacks_the_newer_items(database: Database, new_database: Callable[..., str]) -> None:
    with connect(database, new_database()) as c:
        c.execute(f"CREATE EXTENSION {EXTENSION} VERSION '1.5.3'")
        assert extversion(c) == "1.5.3"
        assert model_ids(c) == set(PRE_REGISTERED)
        names = {r[0] for r in c.execute("SELECT model_qualified_name FROM google_ml.builtin_models")}
        assert len(names) == 11
        assert not names & {"gemini-embedding-001", "text-embedding-005"}
        assert c.execute("SELECT to_regproc('google_ml.model_qualified_name_of')").fetchone() == (None,)
        expect_error(
            c, "SELECT google_ml.model_qualified_name_of('textembedding-gecko')", "42883",
            "function google_ml.model_qualified_name_of(unknown) does not exist",
        )
        # Registered by name only, text-embedding-005 is just some Vertex AI model in 1.5.3.
        c.execute("CALL google_ml.create_model(model_id => 'e5', model_provider => 'google', model_qualified_name => 'text-embedding-005')")
        assert model(c, "e5")["model_type"] == "generic"


def test_update_keeps_user_rows(database: Database, new_database: Callable[..., str]) -> None:
    with connect(database, new_database()) as c:
        c.execute(f"CREATE EXTENSION {EXTENSION} VERSION '1.5.3'")
        c.execute("CALL google_ml.create_sm_secret('k', 'projects/p/secrets/k/versions/1')")
        c.execute("CALL google_ml.create_model('mine', 'https://x.example.com', model_qualified_name => 'q', model_auth_id => 'k')")
        before = model(c, "mine")
        c.execute(f"ALTER EXTENSION {EXTENSION} UPDATE TO '1.6'")
        assert extversion(c) == "1.6"
        assert model(c, "mine") == before
        assert c.execute("SELECT google_ml.model_qualified_name_of('mine')").fetchone() == ("q",)
        c.execute("CALL google_ml.create_model(model_id => 'e5', model_provider => 'google', model_qualified_name => 'text-embedding-005')")
        assert model(c, "e5")["input_transform_fn"] == VERTEX_IN


def test_update_from_1_5_3_equals_a_direct_install(database: Database, new_database: Callable[..., str]) -> None:
    notices: list[str] = []
    with connect(database, new_database()) as upgraded, connect(database, new_database()) as direct:
        upgraded.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        upgraded.execute(f"CREATE EXTENSION {EXTENSION} VERSION '1.5.3'")
        old = catalog(upgraded)
        upgraded.execute(f"ALTER EXTENSION {EXTENSION} UPDATE")
        assert extversion(upgraded) == "1.6"
        upgraded.execute(f"ALTER EXTENSION {EXTENSION} UPDATE")
        assert notices == [f'version "1.6" of extension "{EXTENSION}" is already installed']
        direct.execute(f"CREATE EXTENSION {EXTENSION}")
        new = catalog(upgraded)
        assert new == catalog(direct)
        assert old != new  # the upgrade is observable
        assert len(new["functions"]) == len(old["functions"]) + 1
        assert len(new["builtin_models"]) == len(old["builtin_models"]) + 2


def test_drop_extension_cascade_removes_everything(database: Database, new_database: Callable[..., str]) -> None:
    with connect(database, new_database()) as c:
        c.execute(f"CREATE EXTENSION {EXTENSION}")
        c.execute("CALL google_ml.create_model('m', 'https://x.example.com')")
        c.execute("CREATE TABLE public.uses_enum (p google_ml.model_provider)")
        expect_error(
            c, f"DROP EXTENSION {EXTENSION}", "2BP01",
            f"cannot drop extension {EXTENSION} because other objects depend on it",
        )
        c.execute(f"DROP EXTENSION {EXTENSION} CASCADE")
        assert c.execute("SELECT to_regnamespace('google_ml')").fetchone() == (None,)
        assert extversion(c) is None
        leftovers = c.execute(
            "SELECT count(*) FROM pg_type WHERE typname IN ('model_provider', 'model_type', 'auth_type')"
        ).fetchone()
        assert leftovers == (0,)
        # and it can come back
        c.execute(f"CREATE EXTENSION {EXTENSION}")
        assert model_ids(c) == set(PRE_REGISTERED)
        c.execute(f"DROP EXTENSION {EXTENSION}")
        assert c.execute("SELECT to_regnamespace('google_ml')").fetchone() == (None,)


def test_pg_dump_keeps_user_rows(database: Database, new_database: Callable[..., str]) -> None:
    if getattr(database, "route", "") == "proxy-emulated":
        pytest.skip("an emulated extension has no pg_extension entry: pg_dump writes its objects as plain ones")
    server = database.require_embedded()
    assert server.bin_dir is not None
    source = new_database(f"CREATE EXTENSION {EXTENSION}")
    with connect(database, source) as c:
        c.execute("CALL google_ml.create_sm_secret('k', 'projects/p/secrets/k/versions/1')")
        c.execute("CALL google_ml.create_model('hf', 'https://api-inference.huggingface.co/models/x', 'hugging_face', model_auth_id => 'k')")
        c.execute("CALL google_ml.create_model(model_id => 'oa', model_provider => 'open_ai', model_qualified_name => 'text-embedding-3-small')")
        expected = catalog(c)
    env = {**os.environ, "PGPASSWORD": database.password}
    common = ["-h", database.host, "-p", str(database.port), "-U", database.superuser]
    dump = subprocess.run(
        [str(server.bin_dir / "pg_dump"), *common, "-d", source], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "COPY google_ml.models" in dump and "COPY google_ml.sm_secrets" in dump
    assert "textembedding-gecko" not in dump  # pre-registered rows come from CREATE EXTENSION
    target = new_database()
    subprocess.run(
        [str(server.bin_dir / "psql"), *common, "-d", target, "-X", "-q", "-v", "ON_ERROR_STOP=1"],
        input=dump, capture_output=True, text=True, env=env, check=True,
    )
    with connect(database, target) as c:
        assert catalog(c) == expected
