"""proxy/transforms.py without a server: names, result checks, the plan, the statements, and
the orchestration (dedup, native batches by headers, errors) with a scripted session and engine.
Also Engine.embed with explicit headers, over httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pytest

from proxy.engine.credentials import StaticCredentials
from proxy.engine.engine import Engine
from proxy.engine.errors import ProviderError
from proxy.engine.models import ModelConfig
from proxy.prediction import Call, PredictionError, Reply
from proxy.transforms import (
    NATIVE,
    PREDICT,
    TRANSFORM,
    BadResult,
    answer,
    check_body,
    check_headers,
    check_vector,
    parse_ident,
    plan,
    quote_name,
    request_statement,
    response_statement,
    user_header_fn,
)

CUSTOM = ModelConfig(
    model_id="cymbal",
    model_request_url="https://cymbal.example/models/text/embeddings/v1",
    model_type="text_embedding",
    input_transform_fn="cymbal_in",
    output_transform_fn="public.cymbal_out",
)
VERSIONED = ModelConfig(
    model_id="versioned",
    model_request_url="https://cymbal.example/v1",
    model_type="text_embedding",
    header_gen_fn="headers",
    input_transform_fn="cymbal_in",
    output_transform_fn="cymbal_out",
)
OPENAI_HEADERS = ModelConfig(
    model_id="oa",
    model_request_url="https://api.openai.com/v1/embeddings",
    model_provider="open_ai",
    model_type="text_embedding",
    model_qualified_name="text-embedding-3-small",
    header_gen_fn="Auth.Headers",
    input_transform_fn="google_ml.openai_text_embedding_input_transform",
    output_transform_fn="google_ml.openai_text_embedding_output_transform",
)
GENERIC = ModelConfig(
    model_id="gen", model_request_url="https://x.example/generate", header_gen_fn="kind_headers"
)
CLAUDE = ModelConfig(
    model_id="claude",
    model_request_url="https://api.anthropic.com/v1/messages",
    model_provider="anthropic",
    header_gen_fn="google_ml.anthropic_claude_header_gen_fn",
)
MODELS = {m.model_id: m for m in (CUSTOM, VERSIONED, OPENAI_HEADERS, GENERIC, CLAUDE)}


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("cymbal_text_input_transform", ("cymbal_text_input_transform",)),
        (
            "google_ml.openai_text_embedding_input_transform",
            ("google_ml", "openai_text_embedding_input_transform"),
        ),
        ("MySchema.MyFn", ("myschema", "myfn")),
        ('"MySchema"."My Fn"', ("MySchema", "My Fn")),
        ('  s . "a""b"  ', ("s", 'a"b')),
        ("fn$2", ("fn$2",)),
        ("Ünïcode", ("Ünïcode",)),  # only ASCII is folded
    ],
)
def test_parse_ident_like_postgresql(name, parts):
    assert parse_ident(name) == parts


@pytest.mark.parametrize(
    "name", ["", "1fn", "a.", ".a", 'a"', '""', '"open', "a b", "a;drop", "a(b)"]
)
def test_parse_ident_refuses_what_is_not_a_name(name):
    with pytest.raises(ValueError):
        parse_ident(name)


def test_quote_name():
    assert quote_name(("s", 'a"b')) == '"s"."a""b"'
    assert quote_name(parse_ident("Auth.Headers")) == '"auth"."headers"'


def test_user_header_fn_skips_the_providers_own():
    assert user_header_fn(CLAUDE) is None
    assert user_header_fn(GENERIC) == "kind_headers"
    assert user_header_fn(CUSTOM) is None
    other = ModelConfig(
        model_id="c2",
        model_request_url="https://api.anthropic.com/v1/messages",
        model_provider="anthropic",
        header_gen_fn="my_headers",
    )
    assert user_header_fn(other) == "my_headers"


# -- result checks ----------------------------------------------------------------------------


def test_check_body():
    assert check_body('{"prompt": ["x"]}') == '{"prompt": ["x"]}'  # sent as it is
    assert check_body("[1, 2]") == "[1, 2]"
    with pytest.raises(BadResult, match="NULL") as null:
        check_body(None)
    assert null.value.sqlstate == "22004"
    with pytest.raises(BadResult, match="not JSON") as text:
        check_body("prompt: x")
    assert text.value.sqlstate == "22P02"


def test_check_headers():
    assert check_headers('{"version": "2024-01-01", "Authorization": "Bearer k"}') == {
        "version": "2024-01-01",
        "Authorization": "Bearer k",
    }
    assert check_headers("{}") == {}
    assert check_headers('{"x-pad": "  v\\t "}') == {"x-pad": "v"}
    cases = {
        None: ("22004", "NULL"),
        "nope": ("22P02", "not JSON"),
        '["version"]': ("22000", "JSON array, not an object"),
        '{"x-count": 5}': ("22000", "x-count as a JSON number"),
        '{"x": null}': ("22000", "x as a JSON null"),
        '{"bad name": "v"}': ("22000", "not a valid HTTP field name"),
        '{"Content-Length": "5"}': ("22000", "which the proxy sets itself"),
        '{"x": "a\\r\\nInjected: 1"}': ("22000", "not printable ASCII"),
        '{"x": "caf\\u00e9"}': ("22000", "not printable ASCII"),
    }
    for text, (sqlstate, what) in cases.items():
        with pytest.raises(BadResult) as bad:
            check_headers(text)
        assert bad.value.sqlstate == sqlstate and what in bad.value.what, text


def test_check_headers_never_shows_values():
    secret = "sk-do-not-show-1234"
    for text in (f'{{"Authorization": "Bearer {secret}", "n": 1}}', f'{{"x": "{secret}\\n"}}'):
        with pytest.raises(BadResult) as bad:
            check_headers(text)
        assert secret not in bad.value.what


def test_check_vector():
    assert check_vector("real[]", "[0.5,-1,3e-05]") == [0.5, -1.0, 3e-05]
    cases = [
        (("double precision[]", "[1,2]"), "42804", "returned double precision[], not real[]"),
        (("real[]", None), "22004", "returned NULL"),
        (("real[]", "[]"), "22000", "empty array"),
        (("real[]", "[[1,2],[3,4]]"), "22000", "multidimensional"),
        (("real[]", "[1,null]"), "22000", "NULL at position 2"),
        (("real[]", '[1,"NaN"]'), "22000", "non-finite number at position 2"),
        (("real[]", '["Infinity"]'), "22000", "non-finite"),
    ]
    for args, sqlstate, what in cases:
        with pytest.raises(BadResult) as bad:
            check_vector(*args)
        assert bad.value.sqlstate == sqlstate and what in bad.value.what, args


# -- plan and statements ----------------------------------------------------------------------


def test_plan_modes():
    calls = [
        Call("embedding", "cymbal", "a"),
        Call("predict_row", "gen", '{"kind": "a"}'),
        Call("embedding", "oa", "x"),
        Call("embedding", "cymbal", "b"),
    ]
    groups = {g.model.model_id: g for g in plan(calls, MODELS)}
    assert groups["cymbal"].mode == TRANSFORM and groups["cymbal"].inputs == ["a", "b"]
    assert groups["cymbal"].input_fn == '"cymbal_in"'
    assert groups["cymbal"].output_fn == '"public"."cymbal_out"'
    assert groups["cymbal"].header_fn is None
    assert groups["oa"].mode == NATIVE and groups["oa"].header_fn == '"auth"."headers"'
    assert groups["oa"].input_fn is None  # the provider's native batches
    assert groups["gen"].mode == PREDICT and groups["gen"].header_fn == '"kind_headers"'
    assert len({g.k for g in groups.values()}) == 3


def test_plan_refuses_what_cannot_run():
    half = ModelConfig(
        model_id="half",
        model_request_url="https://x",
        model_type="text_embedding",
        input_transform_fn="f",
    )
    with pytest.raises(PredictionError, match="model_out_transform_fn") as missing:
        plan([Call("embedding", "half", "t")], {"half": half})
    assert missing.value.sqlstate == "22023"
    batch = ModelConfig(
        model_id="batch",
        model_request_url="https://x",
        model_type="text_embedding",
        input_batch_transform_fn="bf_in",
        output_batch_transform_fn="bf_out",
    )
    with pytest.raises(PredictionError, match="batch transform") as unsupported:
        plan([Call("embedding", "batch", "t")], {"batch": batch})
    assert unsupported.value.sqlstate == "0A000"
    odd = ModelConfig(
        model_id="odd",
        model_request_url="https://x",
        model_type="text_embedding",
        input_transform_fn="a b",
        output_transform_fn="f",
    )
    with pytest.raises(PredictionError, match="invalid model_in_transform_fn: a b") as bad_name:
        plan([Call("embedding", "odd", "t")], {"odd": odd})
    assert bad_name.value.sqlstate == "42883"


def test_statements_call_the_contracts_signatures():
    groups = plan(
        [Call("embedding", "versioned", "it's"), Call("predict_row", "gen", '{"k": 1}')], MODELS
    )
    sql = request_statement(groups)
    assert sql is not None and sql.count(" UNION ALL ") == 1
    # embedding: (model_id varchar, input_text text); predict_row: (model_id text, input json)
    assert re.search(r'"cymbal_in"\(\$(\w+)\$versioned\$\1\$::varchar, x\.i\)', sql)
    assert re.search(r'"headers"\(\$(\w+)\$versioned\$\1\$::varchar, x\.i\)', sql)
    assert re.search(r'"kind_headers"\(\$(\w+)\$gen\$\1\$::text, x\.i::json\)', sql)
    assert "json_array_elements_text(" in sql and "WITH ORDINALITY" in sql
    assert '["it\'s"]' in sql  # the inputs travel as one JSON array literal
    out = response_statement([(groups[0], ["[[1]]", '{"a": 2}'])])
    assert '"cymbal_out"(' in out and "OFFSET 0" in out and "pg_typeof" in out
    assert '[[[1]],{"a": 2}]' in out
    # Nothing to evaluate for a native model without a header function
    native = ModelConfig(
        model_id="n",
        model_request_url="https://api.openai.com/v1/embeddings",
        model_provider="open_ai",
        model_type="text_embedding",
        header_gen_fn="h",
    )
    (group,) = plan([Call("embedding", "n", "t")], {"n": native})
    group.header_fn = None
    assert request_statement([group]) is None


# -- orchestration ----------------------------------------------------------------------------


class Session:
    """Answers the two statements like the database would, from Python stand-ins."""

    def __init__(self, *, fail: dict[str, str] | None = None, headers: Any = None) -> None:
        self.statements: list[str] = []
        self.fail = fail
        self.headers = headers if headers is not None else (lambda text: '{"version": "1"}')

    async def __call__(self, sql: str) -> Reply:
        self.statements.append(sql)
        if self.fail is not None:
            return Reply(error=self.fail)
        rows: list[tuple[str | None, ...]] = []
        if "json_array_elements_text" in sql:
            for branch in sql.split(" UNION ALL "):
                k = branch.split(",", 1)[0].removeprefix("SELECT ")
                inputs = _literal_array(branch)
                body = '"cymbal_in"' in branch
                header = '"headers"' in branch or '"kind_headers"' in branch or '"auth"' in branch
                for n, text in enumerate(inputs, start=1):
                    rows.append(
                        (
                            k,
                            str(n),
                            f'{{"prompt": ["{text}"]}}' if body else None,
                            self.headers(text) if header else None,
                        )
                    )
        else:
            for branch in sql.split(" UNION ALL "):
                k = branch.split(",", 1)[0].removeprefix("SELECT ")
                for n, response in enumerate(_literal_array(branch), start=1):
                    rows.append((k, str(n), "real[]", str(response[0])))
        return Reply(rows=rows)


def _literal_array(branch: str) -> list[Any]:
    import json

    match = re.search(r"\$(pgmp\w+)\$(\[.*?\])\$\1\$::json", branch)
    assert match
    return json.loads(match.group(2))


class Engine_:
    def __init__(self, fail: Exception | None = None) -> None:
        self.predicts: list[tuple[str, Any, dict[str, str] | None]] = []
        self.embeds: list[tuple[str, list[str], dict[str, str] | None]] = []
        self.fail = fail

    async def embed(
        self,
        model: Any,
        texts: Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> list[list[float]]:
        self.embeds.append((model.model_id, list(texts), dict(headers) if headers else None))
        return [[float(len(t)), 1.0] for t in texts]

    async def predict(
        self,
        model: Any,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
        raw: bool = False,
    ) -> Any:
        self.predicts.append((model.model_id, body, dict(headers) if headers else None))
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        if model.model_type == "text_embedding":
            text = __import__("json").loads(body)["prompt"][0]
            return [[float(len(text)), 2.0]]
        answer = {"echo": body}
        return __import__("json").dumps(answer) if raw else answer


async def test_answer_transforms_dedups_and_batches():
    session, engine = Session(headers=lambda text: '{"version": "1"}'), Engine_()
    calls = [
        Call("embedding", "cymbal", "aa"),
        Call("embedding", "cymbal", "bbb"),
        Call("embedding", "versioned", "aa"),
        Call("embedding", "oa", "x"),
        Call("embedding", "oa", "yy"),
        Call("predict_row", "gen", '{"kind": "a"}'),
    ]
    rows = await answer(calls, MODELS, session, engine, None)
    assert len(session.statements) == 2  # one for bodies and headers, one for outputs
    found = {(r["fn"], r["m"], r["i"]): r for r in rows}
    assert found[("embedding", "cymbal", "aa")]["e"] == [2.0, 2.0]
    assert found[("embedding", "cymbal", "bbb")]["e"] == [3.0, 2.0]
    assert found[("embedding", "versioned", "aa")]["e"] == [2.0, 2.0]
    assert found[("embedding", "oa", "yy")]["e"] == [2.0, 1.0]
    # predict_row answers stay the provider's JSON text
    assert json.loads(found[("predict_row", "gen", '{"kind": "a"}')]["r"]) == {"echo": '{"kind": "a"}'}
    # one dimension row per embedding model
    assert sorted(r["m"] for r in rows if r["fn"] is None) == ["cymbal", "oa", "versioned"]
    # user transforms: one request per input, with the header function's headers
    assert sorted((m, b, h) for m, b, h in engine.predicts if m != "gen") == [
        ("cymbal", '{"prompt": ["aa"]}', None),
        ("cymbal", '{"prompt": ["bbb"]}', None),
        ("versioned", '{"prompt": ["aa"]}', {"version": "1"}),
    ]
    assert ("gen", '{"kind": "a"}', {"version": "1"}) in engine.predicts  # body as it is
    # native: texts with the same headers share one embed call
    assert engine.embeds == [("oa", ["x", "yy"], {"version": "1"})]


async def test_answer_native_batches_split_by_headers():
    session = Session(headers=lambda text: f'{{"x-len": "{len(text) % 2}"}}')
    engine = Engine_()
    calls = [Call("embedding", "oa", t) for t in ("a", "bb", "c", "dd")]
    await answer(calls, MODELS, session, engine, None)
    assert sorted(engine.embeds) == [
        ("oa", ["a", "c"], {"x-len": "1"}),
        ("oa", ["bb", "dd"], {"x-len": "0"}),
    ]


async def test_answer_same_request_body_is_sent_once():
    session, engine = Session(), Engine_()
    session_call = session.__call__

    async def same_body(sql: str) -> Reply:
        reply = await session_call(sql)
        if "json_array_elements_text" in sql:
            reply.rows = [(k, n, '{"prompt": ["same"]}', h) for k, n, _, h in reply.rows]
        return reply

    rows = await answer(
        [Call("embedding", "cymbal", "a"), Call("embedding", "cymbal", "b")],
        MODELS,
        same_body,
        engine,
        None,
    )
    assert len(engine.predicts) == 1
    assert [r["e"] for r in rows if r["fn"]] == [[4.0, 2.0], [4.0, 2.0]]


async def test_answer_passes_the_servers_error_through():
    session = Session(fail={"M": "cannot embed x", "C": "22023", "D": "raised by f"})
    engine = Engine_()
    with pytest.raises(PredictionError) as failure:
        await answer([Call("embedding", "cymbal", "x")], MODELS, session, engine, None)
    assert (failure.value.message, failure.value.sqlstate, failure.value.detail) == (
        "cannot embed x",
        "22023",
        "raised by f",
    )
    assert engine.predicts == []


async def test_answer_first_request_error_is_raised():
    error = ProviderError(500, "boom", provider="the model endpoint", model_id="cymbal")
    engine = Engine_(fail=error)
    calls = [Call("embedding", "cymbal", t) for t in ("a", "b", "c")]
    with pytest.raises(ProviderError, match="boom"):
        await answer(calls, MODELS, Session(), engine, None)


async def test_answer_names_the_function_that_broke_its_contract():
    session = Session(headers=lambda text: "[1]")
    with pytest.raises(PredictionError) as failure:
        await answer([Call("embedding", "versioned", "a")], MODELS, session, Engine_(), None)
    assert failure.value.message == (
        'model "versioned": header function headers returned a JSON array, not an object of headers'
    )


# -- Engine.embed with explicit headers ----------------------------------------------------------


async def test_engine_embed_sends_explicit_headers_over_the_credentials():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        import json

        count = len(json.loads(request.content)["input"])
        if request.headers.get("x-fail"):
            return httpx.Response(
                401, json={"error": {"message": f"bad key {request.headers['x-api-token']}"}}
            )
        return httpx.Response(
            200, json={"data": [{"index": i, "embedding": [0.5, 0.5]} for i in range(count)]}
        )

    engine = Engine(
        credentials=StaticCredentials(default="sk-from-secret-0000"),
        transport=httpx.MockTransport(handler),
    )
    async with engine:
        vectors = await engine.embed(
            OPENAI_HEADERS,
            ["a", "b"],
            headers={"Authorization": "Bearer sk-header-1111", "version": "2"},
        )
        assert vectors == [[0.5, 0.5], [0.5, 0.5]]
        assert seen[0].headers["authorization"] == "Bearer sk-header-1111"
        assert seen[0].headers.get_list("authorization") == ["Bearer sk-header-1111"]
        assert seen[0].headers["version"] == "2"
        with pytest.raises(ProviderError) as failure:
            await engine.embed(
                OPENAI_HEADERS, ["c"], headers={"x-fail": "1", "X-Api-Token": "tok-secret-2222"}
            )
        assert "tok-secret-2222" not in str(failure.value)


# -- provider details ---------------------------------------------------------------------------


def test_vertex_embedding_bodies_go_to_predict():
    from proxy.engine.settings import EngineSettings
    from proxy.providers import provider_for

    settings = EngineSettings(google_project="p")
    vertex = provider_for("google")
    embedding = ModelConfig(
        model_id="v",
        model_request_url="publishers/google/models/text-embedding-005",
        model_provider="google",
        model_type="text_embedding",
        input_transform_fn="my_in",
        output_transform_fn="my_out",
    )
    request = vertex.predict_request(embedding, '{"instances": []}', settings, {})
    assert str(request.url).endswith("/publishers/google/models/text-embedding-005:predict")
    gemini = ModelConfig(
        model_id="g",
        model_request_url="publishers/google/models/gemini-1.5-pro:generateContent",
        model_provider="google",
    )
    request = vertex.predict_request(gemini, "{}", settings, {})
    assert str(request.url).endswith("/gemini-1.5-pro:generateContent")


def test_predict_row_on_a_text_embedding_model_passes_text_to_its_header_function():
    (group,) = plan([Call("predict_row", "versioned", '{"k": 1}')], MODELS)
    sql = request_statement([group])
    assert sql is not None
    assert re.search(r'"headers"\(\$(\w+)\$versioned\$\1\$::varchar, x\.i\)', sql)
