"""User transform and header functions through the proxy (SPEC §4, the AlloyDB guide's examples).

The functions are the user's SQL; the proxy runs them in the client's session, batched: one
statement builds every input's request body and headers, the engine sends the requests, one
statement applies the output transforms. Custom endpoints are tests/fakes/custom.py (the
guide's Cymbal endpoint: `{"prompt": [text]}` in, `[[...]]` out); a header function on an
OpenAI model keeps OpenAI's native batches.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.fakes.custom import FakeCustom
from tests.fakes.openai import FakeOpenAI
from tests.support import ProxyProcess

CUSTOM_KEY = "sk-custom-endpoint-key-4242"
OPENAI_KEY = "sk-openai-key-for-headers"
LEAKED = "sk-must-never-be-shown-1234"

# The AlloyDB guide's functions, verbatim (seeds 000 and 003)
SEED_FUNCTIONS = """
CREATE OR REPLACE FUNCTION cymbal_text_input_transform(model_id VARCHAR(100), input_text TEXT)
RETURNS JSON
LANGUAGE plpgsql
AS $$
DECLARE
  transformed_input JSON;
  model_qualified_name TEXT;
BEGIN
  SELECT json_build_object('prompt', json_build_array(input_text))::JSON INTO transformed_input;
  RETURN transformed_input;
END;
$$;
CREATE OR REPLACE FUNCTION cymbal_text_output_transform(model_id VARCHAR(100), response_json JSON)
RETURNS REAL[]
LANGUAGE plpgsql
AS $$
DECLARE
  transformed_output REAL[];
BEGIN
  SELECT ARRAY(SELECT json_array_elements_text(response_json->0)) INTO transformed_output;
  RETURN transformed_output;
END;
$$;
CREATE OR REPLACE FUNCTION header_gen_fn(model_id VARCHAR(100), input_text TEXT)
RETURNS JSON
LANGUAGE plpgsql
AS $$
BEGIN
  RETURN json_build_object('version', '2024-01-01')::JSON;
END;
$$;
"""

OTHER_FUNCTIONS = f"""
CREATE FUNCTION keyed_headers(model_id varchar(100), input_text text) RETURNS json
LANGUAGE sql AS $$ SELECT json_build_object('Authorization', 'Bearer {CUSTOM_KEY}',
                                            'version', '2024-01-01',
                                            'x-input-length', length(input_text)::text) $$;
CREATE FUNCTION wrong_key_headers(model_id varchar(100), input_text text) RETURNS json
LANGUAGE sql AS $$ SELECT json_build_object('Authorization', 'Bearer {LEAKED}', 'version', '2024-01-01') $$;
CREATE FUNCTION openai_headers(model_id varchar(100), input_text text) RETURNS json
LANGUAGE sql AS $$ SELECT json_build_object('Authorization', 'Bearer {OPENAI_KEY}') $$;
CREATE FUNCTION kind_headers(model_id text, input json) RETURNS json
LANGUAGE sql AS $$ SELECT json_build_object('x-kind', input->>'kind', 'x-model', model_id) $$;

CREATE FUNCTION raising_in(model_id varchar(100), input_text text) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'cannot embed %', input_text USING ERRCODE = '22023', DETAIL = 'raised by raising_in';
END $$;
CREATE FUNCTION raising_out(model_id varchar(100), response_json json) RETURNS real[] LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'unexpected response for %', model_id USING ERRCODE = 'P0001';
END $$;
CREATE FUNCTION null_in(model_id varchar(100), input_text text) RETURNS json
LANGUAGE sql AS $$ SELECT NULL::json $$;
CREATE FUNCTION text_in(model_id varchar(100), input_text text) RETURNS json
LANGUAGE sql AS $$ SELECT '{{}}'::json $$;
CREATE FUNCTION null_out(model_id varchar(100), response_json json) RETURNS real[]
LANGUAGE sql AS $$ SELECT NULL::real[] $$;
CREATE FUNCTION empty_out(model_id varchar(100), response_json json) RETURNS real[]
LANGUAGE sql AS $$ SELECT '{{}}'::real[] $$;
CREATE FUNCTION double_out(model_id varchar(100), response_json json) RETURNS real[]
LANGUAGE sql AS $$ SELECT '{{1,2}}'::real[] $$;
CREATE FUNCTION array_headers(model_id varchar(100), input_text text) RETURNS json
LANGUAGE sql AS $$ SELECT json_build_array('version', '2024-01-01') $$;
CREATE FUNCTION number_headers(model_id varchar(100), input_text text) RETURNS json
LANGUAGE sql AS $$ SELECT json_build_object('Authorization', 'Bearer {LEAKED}', 'x-count', 5) $$;
CREATE FUNCTION null_headers(model_id varchar(100), input_text text) RETURNS json
LANGUAGE sql AS $$ SELECT NULL::json $$;
"""


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeCustom, FakeCustom, FakeOpenAI]]:
    with (
        FakeCustom() as plain,
        FakeCustom(CUSTOM_KEY, required_headers={"version": "2024-01-01"}) as keyed,
        FakeOpenAI(OPENAI_KEY) as openai,
    ):
        yield plain, keyed, openai


@pytest.fixture(scope="module")
def transforms_proxy(database, fakes) -> Iterator[ProxyProcess]:
    _, _, openai = fakes
    p = ProxyProcess(
        [
            "--upstream",
            database.upstream,
            "--openai-base-url",
            openai.base_url,
            "--model-timeout",
            "5",
        ],
        env={"PGMP_TEST_CUSTOM_KEY": CUSTOM_KEY, "PGMP_TEST_OPENAI_KEY": OPENAI_KEY},
        superuser_password=database.password,
    ).start()
    yield p
    p.stop()


def custom_model(c: psycopg.Connection, model_id: str, url: str, **functions: str) -> None:
    named = "".join(f", {name} => '{fn}'" for name, fn in functions.items())
    c.execute(
        f"CALL google_ml.create_model(model_id => '{model_id}', model_request_url => '{url}', "
        f"model_provider => 'custom', model_type => 'text_embedding'{named})"
    )


@pytest.fixture(scope="module")
def dbname(database, fakes) -> Iterator[str]:
    plain, keyed, _ = fakes
    seed = {
        "model_in_transform_fn": "cymbal_text_input_transform",
        "model_out_transform_fn": "cymbal_text_output_transform",
    }
    with database.scratch("transforms") as name:
        with psycopg.connect(database.direct_dsn(database=name), autocommit=True) as c:
            c.execute("CREATE EXTENSION google_ml_integration")
            c.execute(SEED_FUNCTIONS)
            c.execute(OTHER_FUNCTIONS)
            c.execute("CALL google_ml.create_sm_secret('custom-key', 'env:PGMP_TEST_CUSTOM_KEY')")
            c.execute("CALL google_ml.create_sm_secret('openai-key', 'env:PGMP_TEST_OPENAI_KEY')")
            # The guide's custom embedding model (no auth: the endpoint is on a private network)
            custom_model(c, "custom-embedding-model", plain.embeddings_url, **seed)
            # With a secret and the guide's header function: both reach the endpoint
            c.execute(
                "CALL google_ml.create_model(model_id => 'cymbal-versioned', "
                f"model_request_url => '{keyed.embeddings_url}', model_provider => 'custom', "
                "model_type => 'text_embedding', model_auth_type => 'secret_manager', "
                "model_auth_id => 'custom-key', generate_headers_fn => 'header_gen_fn', "
                "model_in_transform_fn => 'cymbal_text_input_transform', "
                "model_out_transform_fn => 'cymbal_text_output_transform')"
            )
            custom_model(
                c,
                "cymbal-header-auth",
                keyed.embeddings_url,
                generate_headers_fn="keyed_headers",
                **seed,
            )
            custom_model(
                c,
                "cymbal-wrong-key",
                keyed.embeddings_url,
                generate_headers_fn="wrong_key_headers",
                **seed,
            )
            # OpenAI with the built-in transforms and a header function for the key
            c.execute(
                "CALL google_ml.create_model(model_id => 'openai-headers', model_provider => 'open_ai', "
                "model_qualified_name => 'text-embedding-3-small', model_type => 'text_embedding', "
                "generate_headers_fn => 'openai_headers')"
            )
            c.execute(
                "CALL google_ml.create_model(model_id => 'openai-plain', model_provider => 'open_ai', "
                "model_qualified_name => 'text-embedding-3-small', model_type => 'text_embedding', "
                "model_auth_type => 'secret_manager', model_auth_id => 'openai-key')"
            )
            # A generic custom model with a predict_row header function
            c.execute(
                "CALL google_ml.create_model(model_id => 'generic-headers', "
                f"model_request_url => '{plain.generate_url}', model_provider => 'custom', "
                "model_type => 'generic', generate_headers_fn => 'kind_headers')"
            )
            # Models whose functions break their contracts
            out = {"model_out_transform_fn": "cymbal_text_output_transform"}
            into = {"model_in_transform_fn": "cymbal_text_input_transform"}
            custom_model(
                c, "err-raise-in", plain.embeddings_url, model_in_transform_fn="raising_in", **out
            )
            custom_model(
                c, "err-raise-out", plain.embeddings_url, model_out_transform_fn="raising_out", **into
            )
            custom_model(c, "err-null-in", plain.embeddings_url, model_in_transform_fn="null_in", **out)
            custom_model(c, "err-text-in", plain.embeddings_url, model_in_transform_fn="text_in", **out)
            custom_model(
                c, "err-null-out", plain.embeddings_url, model_out_transform_fn="null_out", **into
            )
            custom_model(
                c, "err-empty-out", plain.embeddings_url, model_out_transform_fn="empty_out", **into
            )
            custom_model(
                c, "err-type-out", plain.embeddings_url, model_out_transform_fn="double_out", **into
            )
            custom_model(
                c, "err-hdr-array", plain.embeddings_url, generate_headers_fn="array_headers", **seed
            )
            custom_model(
                c, "err-hdr-number", plain.embeddings_url, generate_headers_fn="number_headers", **seed
            )
            custom_model(
                c, "err-hdr-null", plain.embeddings_url, generate_headers_fn="null_headers", **seed
            )
            custom_model(c, "err-no-transforms", plain.embeddings_url)
            # Functions replaced after registration by ones of another return type (the
            # registration checks cannot see this)
            c.execute(
                "DROP FUNCTION double_out(varchar, json); "
                "CREATE FUNCTION double_out(model_id varchar(100), response_json json) RETURNS double precision[] "
                "LANGUAGE sql AS $$ SELECT '{1,2}'::double precision[] $$; "
                "DROP FUNCTION text_in(varchar, text); "
                "CREATE FUNCTION text_in(model_id varchar(100), input_text text) RETURNS text "
                "LANGUAGE sql AS $$ SELECT 'prompt: ' || input_text $$"
            )
        yield name


@pytest.fixture
def conn(transforms_proxy, dbname, fakes) -> Iterator[psycopg.Connection]:
    for fake in fakes:
        fake.reset()
    with psycopg.connect(transforms_proxy.dsn(database=dbname), autocommit=True) as c:
        yield c


def close_to(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def test_custom_model_of_the_seed_document(conn, fakes):
    plain = fakes[0]
    value = conn.execute(
        "SELECT google_ml.embedding(model_id => 'custom-embedding-model', content => 'AlloyDB Embeddings')"
    ).fetchone()[0]
    assert close_to(value, FakeCustom.expected_embedding("AlloyDB Embeddings"))
    assert plain.request_count == 1
    request = plain.requests[0]
    assert request.path == "/models/text/embeddings/v1"
    assert request.json == {"prompt": ["AlloyDB Embeddings"]}  # the input transform's JSON
    assert "authorization" not in request.headers


def test_update_sends_one_request_per_distinct_input(conn, fakes):
    plain = fakes[0]
    table = f"docs_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text, emb real[])")
    conn.execute(f"INSERT INTO {table} SELECT i, 'doc ' || (i % 7) FROM generate_series(1, 40) i")
    cur = conn.execute(
        f"UPDATE {table} SET emb = google_ml.embedding('custom-embedding-model', body)"
    )
    assert cur.rowcount == 40
    prompts = sorted(r.json["prompt"][0] for r in plain.requests)
    assert prompts == sorted(f"doc {i}" for i in range(7))  # one request per distinct input
    assert all(len(r.json["prompt"]) == 1 for r in plain.requests)
    for body, emb in conn.execute(f"SELECT body, emb FROM {table}"):
        assert close_to(emb, FakeCustom.expected_embedding(body)), body


def test_insert_select_and_a_transaction_block(conn, transforms_proxy, dbname, fakes):
    plain = fakes[0]
    source, target = f"src_{uuid.uuid4().hex[:8]}", f"dst_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {source} (id int, body text)")
    conn.execute(f"CREATE TABLE {target} (id int, emb real[])")
    conn.execute(f"INSERT INTO {source} VALUES (1, 'one'), (2, 'two'), (3, 'one')")
    with psycopg.connect(
        transforms_proxy.dsn(database=dbname)
    ) as tx:  # a collect run in a savepoint
        tx.execute(
            f"INSERT INTO {target} SELECT id, embedding('custom-embedding-model', body) FROM {source}"
        )
        tx.commit()
    rows = dict(conn.execute(f"SELECT id, emb FROM {target}").fetchall())
    assert close_to(rows[1], FakeCustom.expected_embedding("one")) and rows[1] == rows[3]
    assert close_to(rows[2], FakeCustom.expected_embedding("two"))
    assert sorted(r.json["prompt"][0] for r in plain.requests) == ["one", "two"]


def test_header_function_and_secret_both_reach_the_endpoint(conn, fakes):
    keyed = fakes[1]
    value = conn.execute("SELECT google_ml.embedding('cymbal-versioned', 'versioned')").fetchone()[
        0
    ]
    assert close_to(value, FakeCustom.expected_embedding("versioned"))
    request = keyed.requests[-1]
    assert request.headers["version"] == "2024-01-01"
    assert request.headers["authorization"] == f"Bearer {CUSTOM_KEY}"


def test_header_function_per_input(conn, fakes):
    keyed = fakes[1]
    rows = conn.execute(
        "SELECT t, embedding('cymbal-header-auth', t) FROM unnest(ARRAY['a', 'bb', 'ccc']) AS t"
    ).fetchall()
    for text, value in rows:
        assert close_to(value, FakeCustom.expected_embedding(text))
    assert keyed.request_count == 3
    lengths = {r.json["prompt"][0]: r.headers["x-input-length"] for r in keyed.requests}
    assert lengths == {"a": "1", "bb": "2", "ccc": "3"}
    assert all(r.headers["authorization"] == f"Bearer {CUSTOM_KEY}" for r in keyed.requests)


def test_header_function_on_a_builtin_provider_keeps_its_batches(conn, fakes):
    openai = fakes[2]
    rows = conn.execute(
        "SELECT embedding('openai-headers', t) FROM unnest(ARRAY['x', 'y', 'z', 'x']) AS t"
    ).fetchall()
    assert all(
        close_to(v, FakeOpenAI.expected_embedding(t, "text-embedding-3-small"))
        for (v,), t in zip(rows, "xyzx", strict=True)
    )
    assert openai.request_count == 1  # texts with the same headers share a request
    request = openai.requests[0]
    assert sorted(request.json["input"]) == ["x", "y", "z"]
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"


def test_builtin_model_without_functions_is_unaffected(conn, fakes):
    openai = fakes[2]
    rows = conn.execute(
        "SELECT embedding('openai-plain', t) FROM unnest(ARRAY['p', 'q']) AS t"
    ).fetchall()
    assert len(rows) == 2 and all(len(v) == 1536 for (v,) in rows)
    assert openai.request_count == 1 and sorted(openai.requests[0].json["input"]) == ["p", "q"]


def test_header_function_on_predict_row(conn, fakes):
    plain = fakes[0]
    rows = conn.execute(
        "SELECT b ->> 'kind', google_ml.predict_row('generic-headers', b) "
        'FROM (VALUES (\'{"kind": "a", "n": 1}\'::json), (\'{"kind": "b"}\'::json)) AS v(b)'
    ).fetchall()
    for kind, answer in rows:
        assert answer["received"]["kind"] == kind
        assert answer["path"] == "/models/generic/v1/generate"
    seen = {r.json["kind"]: (r.headers["x-kind"], r.headers["x-model"]) for r in plain.requests}
    assert seen == {"a": ("a", "generic-headers"), "b": ("b", "generic-headers")}
    # ml_predict_row with a literal: the same path
    answer = conn.execute(
        "SELECT ml_predict_row('generic-headers', '{\"kind\": \"c\"}')"
    ).fetchone()[0]
    assert answer["received"] == {"kind": "c"} and plain.requests[-1].headers["x-kind"] == "c"


@pytest.mark.parametrize(
    ("model", "sqlstate", "message"),
    [
        ("err-raise-in", "22023", "cannot embed boom"),
        ("err-raise-out", "P0001", "unexpected response for err-raise-out"),
        (
            "err-null-in",
            "22004",
            'model "err-null-in": input transform function null_in returned NULL',
        ),
        (
            "err-text-in",
            "22P02",
            "input transform function text_in returned a value that is not JSON",
        ),
        ("err-null-out", "22004", "output transform function null_out returned NULL"),
        ("err-empty-out", "22000", "output transform function empty_out returned an empty array"),
        ("err-type-out", "42804", "double_out returned double precision[], not real[]"),
        (
            "err-hdr-array",
            "22000",
            "header function array_headers returned a JSON array, not an object",
        ),
        ("err-hdr-number", "22000", "returned header x-count as a JSON number, not a string"),
        ("err-hdr-null", "22004", "header function null_headers returned NULL"),
        ("err-no-transforms", "22023", "register input and output transform functions"),
    ],
)
def test_functions_breaking_their_contract(conn, fakes, model, sqlstate, message):
    with pytest.raises(psycopg.Error) as failure:
        conn.execute(f"SELECT google_ml.embedding('{model}', 'boom')")
    assert failure.value.diag.sqlstate == sqlstate
    assert message in failure.value.diag.message_primary
    assert LEAKED not in str(failure.value)
    if model == "err-raise-in":
        assert failure.value.diag.message_detail == "raised by raising_in"
    if model.startswith(("err-raise-in", "err-null-in", "err-text-in", "err-hdr", "err-no")):
        assert fakes[0].request_count == 0  # nothing was sent
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_error_in_a_transaction_fails_it_as_usual(transforms_proxy, dbname):
    with psycopg.connect(transforms_proxy.dsn(database=dbname)) as tx:
        tx.execute("SELECT 1")
        with pytest.raises(psycopg.errors.NullValueNotAllowed):
            tx.execute("SELECT google_ml.embedding('err-null-out', 'x')")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            tx.execute("SELECT 1")
        tx.rollback()
        value = tx.execute(
            "SELECT google_ml.embedding('custom-embedding-model', 'after')"
        ).fetchone()[0]
        assert close_to(value, FakeCustom.expected_embedding("after"))


def test_provider_error_does_not_show_the_header_functions_secret(conn, fakes):
    keyed = fakes[1]
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.embedding('cymbal-wrong-key', 'x')")
    assert "401" in str(failure.value)
    assert "invalid credentials" in str(failure.value)  # the endpoint's own words...
    assert LEAKED not in str(failure.value)  # ...without the key it echoed
    assert keyed.requests[-1].headers["authorization"] == f"Bearer {LEAKED}"


def test_predict_row_body_is_sent_unchanged(conn, fakes):
    plain = fakes[0]
    body = '{"kind": "exact",   "nested": {"a": [1, 2.50]}}'
    conn.execute("SELECT google_ml.predict_row('generic-headers', %s::json)", (body,))
    assert plain.requests[-1].body == body.encode()
    assert json.loads(plain.requests[-1].body) == {"kind": "exact", "nested": {"a": [1, 2.5]}}
