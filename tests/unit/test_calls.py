"""Finding prediction call sites in statement text (no server)."""

import pytest

from proxy.sql.calls import CallSite, find_calls, may_call_models


def test_cheap_test():
    assert may_call_models(b"SELECT google_ml.EMBEDDING('m', 'q')")
    assert may_call_models(b"select ml_predict_row('m', '{}')")
    assert not may_call_models(b"select * from items where id = 1")


@pytest.mark.parametrize(
    "sql, expected",
    [
        (
            "SELECT google_ml.embedding(model_id => 'text-embedding-005', content => 'AlloyDB is ...')",
            [CallSite("embedding", ("'text-embedding-005'", "'AlloyDB is ...'"), True)],
        ),
        ("SELECT embedding('m', 'q')::vector", [CallSite("embedding", ("'m'", "'q'"), True)]),
        (
            "SELECT id FROM items ORDER BY emb <=> google_ml.embedding('m', $1)::vector LIMIT 10",
            [CallSite("embedding", ("'m'", "$1"), True)],
        ),
        (
            "UPDATE items SET emb = google_ml.embedding('m', description) WHERE emb IS NULL",
            [CallSite("embedding", ("'m'", "description"), False)],
        ),
        (
            "INSERT INTO items(content, emb) VALUES ('x', embedding('m', 'x')::vector)",
            [CallSite("embedding", ("'m'", "'x'"), True)],
        ),
        (
            "SELECT google_ml.embedding(content => lower($2), model_id => 'm')",
            [CallSite("embedding", ("'m'", "lower($2)"), True)],
        ),
        (
            "SELECT json_array_elements(google_ml.predict_row('gemini-1.5-pro:streamGenerateContent', "
            "'{\"contents\": []}')) -> 'candidates'",
            [CallSite("predict_row", ("'gemini-1.5-pro:streamGenerateContent'", "'{\"contents\": []}'"), True)],
        ),
        ("SELECT embedding('m', (SELECT body FROM t LIMIT 1))", [CallSite("embedding", ("'m'", "(SELECT body FROM t LIMIT 1)"), False)]),
        ("SELECT embedding('m', 'x' || random()::text)", [CallSite("embedding", ("'m'", "'x' || CAST(random() AS text)"), False)]),
    ],
)
def test_call_sites(sql, expected):
    assert find_calls(sql) == expected


def test_string_literal_arguments_are_known_without_evaluation():
    (plain,) = find_calls("SELECT google_ml.embedding(content => E'a\\nb', model_id => 'm')")
    assert plain.values == ("m", "a\nb")
    (cast,) = find_calls("SELECT embedding('m', 'x'::text)")
    assert cast.values is None and cast.constant  # evaluated by the server
    (number,) = find_calls("SELECT embedding('m', 42)")
    assert number.values is None


def test_multiple_statements_and_nested_calls():
    calls = find_calls(
        "SELECT embedding('m', 'a'); WITH q AS (SELECT google_ml.embedding('m', $1) e) "
        "SELECT ml_predict_row('g', json_build_object('q', 1)) FROM q"
    )
    assert sorted(c.kind for c in calls) == ["embedding", "embedding", "predict_row"]
    assert all(c.constant for c in calls)


def test_other_functions_and_bad_calls_are_ignored():
    assert find_calls("SELECT my_schema.embedding('m', 'q')") == []
    assert find_calls("SELECT embedding('only one')") == []
    assert find_calls("SELECT embedding(model_id => 'm', wrong => 'q')") == []
    assert find_calls("SELEC embedding('m', 'q')") == []
    assert find_calls("SELECT 'embedding(''m'', ''q'')'") == []  # inside a string literal


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE FUNCTION f(t text) RETURNS real[] LANGUAGE sql RETURN google_ml.embedding('m', t)",
        "CREATE VIEW v AS SELECT embedding('m', body) FROM t",
        "CREATE TABLE d (c text, e real[] GENERATED ALWAYS AS (embedding('m', c)) STORED)",
        "PREPARE p AS SELECT embedding('m', 'q')",
    ],
)
def test_definitions_are_not_calls(sql):
    assert find_calls(sql) == []


def test_explain_and_create_table_as_evaluate():
    assert len(find_calls("EXPLAIN SELECT id FROM t ORDER BY e <=> embedding('m', 'q')::vector LIMIT 5")) == 1
    assert len(find_calls("CREATE TABLE x AS SELECT embedding('m', body) FROM t")) == 1


def test_arguments_query_for_updates():
    from proxy.sql.calls import arguments_query

    assert arguments_query("UPDATE docs SET emb = google_ml.embedding('m', body)::vector WHERE emb IS NULL") == (
        "SELECT ('m')::text, (body)::text FROM docs WHERE emb IS NULL",
        ["embedding"],
    )
    assert arguments_query("UPDATE docs d SET emb = embedding('m', d.body || u.x) FROM u WHERE u.id = d.id") == (
        "SELECT ('m')::text, (d.body || u.x)::text FROM docs AS d, u WHERE u.id = d.id",
        ["embedding"],
    )
    # Shapes it leaves to the general collect run:
    for sql in (
        "UPDATE docs SET emb = embedding('m', body) WHERE embedding('m', body) IS NULL",
        "WITH w AS (DELETE FROM x RETURNING 1) UPDATE docs SET emb = embedding('m', body)",
        "UPDATE docs SET emb = embedding('m', 'const')",
        "UPDATE docs SET emb = embedding('m', body) RETURNING embedding('m', 'x')",
        "INSERT INTO docs SELECT embedding('m', body) FROM src",
    ):
        assert arguments_query(sql) is None, sql
