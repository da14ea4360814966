"""User transform and header functions: run in the database, in the client's session, batched.

SPEC §4: a text_embedding model may name an input transform, `(model_id, input_text) → json`,
whose JSON is the request body POSTed to the model's URL, and an output transform,
`(model_id, response_json) → real[]`, which turns the response into the embedding. Any model
may name a header function whose JSON object gives HTTP headers: `(model_id, input_text)` for
`embedding`, `(model_id, input json)` for `predict_row`. They are the user's SQL functions, so
they run in the database, in the client's own session (its search_path, privileges and
transaction), and batched (DESIGN §2):

1. one statement evaluates every input's request body and headers
   (`SELECT k, n, in_fn(m, x.i)::text, hdr_fn(m, x.i)::text FROM json_array_elements_text(…)
   WITH ORDINALITY x(i, n)`, one `UNION ALL` branch a model);
2. the engine sends the requests (deduplicated, concurrent within its per-model limit, with
   retries and deadlines): one request per distinct body and headers for user transforms;
   native batches for a model whose transforms are the provider's built-in ones, texts with the
   same headers sharing a request; each `predict_row` body as it is;
3. one statement applies the output transforms to every response.

Headers join the credentials' headers (a `secret_manager` secret still goes out, as AlloyDB
sends Anthropic's `x-api-key` beside `anthropic_claude_header_gen_fn`'s `anthropic-version`)
and win where both name the same header. Their values never enter messages.

Errors a user can act on become `PredictionError`s: an error the functions raise is the
server's own (message, SQLSTATE, detail); a wrong result (NULL, not JSON, not real[], empty,
headers that are not an object of strings) names the model and the function.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .engine.models import ModelConfig
from .prediction import Call, PredictionError, Reply, quote_literal
from .providers.registry import PROVIDERS

CHUNK_CALLS = 1000  # inputs per round (transform statement, requests, output statement)

# Null results, wrong types, malformed values
NULL_RESULT, WRONG_TYPE, BAD_TEXT, BAD_VALUE = "22004", "42804", "22P02", "22000"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 field-name
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")  # visible ASCII, space and tab
# Headers the HTTP client sets from the request itself
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_SPACE = " \t\n\r\f"  # PostgreSQL's scanner_isspace
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class RunFn(Protocol):
    """A statement of the proxy's own in the client's session (`Prewarmer._own`)."""

    def __call__(self, sql: str) -> Awaitable[Reply]: ...


class TransformEngine(Protocol):
    async def embed(
        self,
        model: Any,
        texts: Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> list[list[float]]: ...

    async def predict(
        self,
        model: Any,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
        raw: bool = False,
    ) -> Any: ...


# -- names ----------------------------------------------------------------------------------


def parse_ident(name: str) -> tuple[str, ...]:
    """The parts of a (qualified) name as PostgreSQL's `parse_ident()` splits them.

    Unquoted parts are folded to lower case (ASCII), quoted ones kept with `""` undoubled.
    ValueError if `name` is not a name.
    """
    parts: list[str] = []
    i, n = 0, len(name)
    while True:
        while i < n and name[i] in _SPACE:
            i += 1
        if i < n and name[i] == '"':
            pieces: list[str] = []
            j = i + 1
            while True:
                close = name.find('"', j)
                if close < 0:
                    raise ValueError("unterminated quoted identifier")
                pieces.append(name[j:close])
                if name.startswith('"', close + 1):
                    pieces.append('"')
                    j = close + 2
                    continue
                i = close + 1
                break
            part = "".join(pieces)
            if not part:
                raise ValueError("zero-length quoted identifier")
        else:
            j = i
            while j < n and _ident_char(name[j], start=j == i):
                j += 1
            if j == i:
                raise ValueError("no identifier")
            part = name[i:j].translate(_ASCII_LOWER)
            i = j
        parts.append(part)
        while i < n and name[i] in _SPACE:
            i += 1
        if i == n:
            return tuple(parts)
        if name[i] != ".":
            raise ValueError(f"unexpected {name[i]!r} after an identifier")
        i += 1


def _ident_char(c: str, *, start: bool) -> bool:
    if c == "_" or "a" <= c <= "z" or "A" <= c <= "Z" or ord(c) >= 0x80:
        return True
    return not start and ("0" <= c <= "9" or c == "$")


def quote_name(parts: Sequence[str]) -> str:
    """A name for SQL text: each part double-quoted."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def function_sql(model_id: str, param: str, name: str) -> str:
    """The SQL name of a model's function as registered (resolved by the session's search_path)."""
    try:
        return quote_name(parse_ident(name))
    except ValueError:
        raise PredictionError(
            f'model "{model_id}": invalid {param}: {name}', "42883", "Not a function name."
        ) from None


def user_header_fn(model: ModelConfig) -> str | None:
    """The model's header function, unless its provider adds those headers itself."""
    fn = model.header_gen_fn
    provider = PROVIDERS.get(model.model_provider)
    if fn is None or (provider is not None and fn in provider.builtin_header_fns):
        return None
    return fn


# -- checking the functions' results -----------------------------------------------------------


class BadResult(ValueError):
    """A function's result does not fit its contract: what is wrong (no values), and a SQLSTATE."""

    def __init__(self, what: str, sqlstate: str) -> None:
        super().__init__(what)
        self.what, self.sqlstate = what, sqlstate


def check_body(text: str | None) -> str:
    """An input transform's result (json as text): the request body, sent as it is."""
    if text is None:
        raise BadResult("returned NULL", NULL_RESULT)
    try:
        json.loads(text)
    except ValueError:
        raise BadResult("returned a value that is not JSON", BAD_TEXT) from None
    return text


def check_headers(text: str | None) -> dict[str, str]:
    """A header function's result (json as text): a JSON object of string values."""
    if text is None:
        raise BadResult("returned NULL, not a JSON object of headers", NULL_RESULT)
    try:
        data = json.loads(text)
    except ValueError:
        raise BadResult("returned a value that is not JSON", BAD_TEXT) from None
    if not isinstance(data, dict):
        raise BadResult(f"returned a JSON {_json_type(data)}, not an object of headers", BAD_VALUE)
    headers: dict[str, str] = {}
    for name, value in data.items():
        if not _TOKEN.match(name):
            raise BadResult("returned a header name that is not a valid HTTP field name", BAD_VALUE)
        if name.lower() in _FRAMING_HEADERS:
            raise BadResult(f"returned header {name}, which the proxy sets itself", BAD_VALUE)
        if not isinstance(value, str):
            raise BadResult(
                f"returned header {name} as a JSON {_json_type(value)}, not a string", BAD_VALUE
            )
        value = value.strip(" \t")
        if not _FIELD_VALUE.match(value):
            raise BadResult(
                f"returned header {name} with a value that is not printable ASCII", BAD_VALUE
            )
        headers[name] = value
    return headers


def check_vector(type_name: str | None, text: str | None) -> list[float]:
    """An output transform's result (its type, and the value as JSON): a non-empty real[]."""
    if type_name != "real[]":
        raise BadResult(f"returned {type_name}, not real[]", WRONG_TYPE)
    if text is None:
        raise BadResult("returned NULL", NULL_RESULT)
    value = orjson.loads(text)
    if not isinstance(value, list):  # cannot happen for real[]; guard anyway
        raise BadResult("did not return an array", WRONG_TYPE)
    if not value:
        raise BadResult("returned an empty array", BAD_VALUE)
    for i, x in enumerate(value, start=1):
        if isinstance(x, list):
            raise BadResult("returned a multidimensional array", BAD_VALUE)
        if x is None:
            raise BadResult(f"returned an array with NULL at position {i}", BAD_VALUE)
        # to_json writes NaN and ±Infinity as strings
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise BadResult(f"returned a non-finite number at position {i}", BAD_VALUE)
    return [float(x) for x in value]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# -- the plan ---------------------------------------------------------------------------------

TRANSFORM, NATIVE, PREDICT = "transform", "native", "predict"


@dataclass
class Group:
    """The inputs of one model and what runs for them."""

    k: int  # branch number in the statements
    kind: str  # embedding | predict_row
    model: ModelConfig
    mode: str  # TRANSFORM (user transforms), NATIVE (provider's batches), PREDICT
    inputs: list[str] = field(default_factory=list)
    input_fn: str | None = None  # SQL names
    output_fn: str | None = None
    header_fn: str | None = None
    bodies: list[str] = field(default_factory=list)  # per input (TRANSFORM)
    headers: list[dict[str, str]] = field(default_factory=list)  # per input (with header_fn)
    answers: list[Any] = field(default_factory=list)  # per input: vector or JSON


def plan(calls: Sequence[Call], models: Mapping[str, ModelConfig]) -> list[Group]:
    """Group the calls by model and decide what runs for each; PredictionError if nothing can."""
    groups: dict[tuple[str, str], Group] = {}
    for call in calls:
        key = (call.kind, call.model_id)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _group(len(groups) + 1, call.kind, models[call.model_id])
        group.inputs.append(call.input)
    return list(groups.values())


def _group(k: int, kind: str, model: ModelConfig) -> Group:
    mid = model.model_id
    header = user_header_fn(model)
    header_fn = None if header is None else function_sql(mid, "generate_headers_fn", header)
    if kind != "embedding":
        return Group(k, kind, model, PREDICT, header_fn=header_fn)
    provider = PROVIDERS.get(model.model_provider)
    builtin = provider.builtin_transforms if provider is not None else frozenset()
    transforms = {model.input_transform_fn, model.output_transform_fn} - {None}
    if provider is not None and provider.supports_embeddings and transforms <= builtin:
        if model.input_batch_transform_fn or model.output_batch_transform_fn:
            raise _unsupported_batch(mid)
        return Group(k, kind, model, NATIVE, header_fn=header_fn)
    if model.input_transform_fn is None or model.output_transform_fn is None:
        if model.input_batch_transform_fn or model.output_batch_transform_fn:
            raise _unsupported_batch(mid)
        missing = (
            "model_in_transform_fn"
            if model.input_transform_fn is None
            else "model_out_transform_fn"
        )
        label = provider.label if provider is not None else model.model_provider
        raise PredictionError(
            f'model "{mid}": {label} has no built-in embedding support and the model has no '
            f"{missing}; register input and output transform functions",
            "22023",
        )
    return Group(
        k,
        kind,
        model,
        TRANSFORM,
        input_fn=function_sql(mid, "model_in_transform_fn", model.input_transform_fn),
        output_fn=function_sql(mid, "model_out_transform_fn", model.output_transform_fn),
        header_fn=header_fn,
    )


def _unsupported_batch(model_id: str) -> PredictionError:
    return PredictionError(
        f'model "{model_id}": batch transform functions without row transform functions are not '
        "supported by pg-model-proxy yet",
        "0A000",
    )


# -- the statements ---------------------------------------------------------------------------


def _json_literal(values: Sequence[Any]) -> str:
    return quote_literal(orjson.dumps(list(values)).decode()) + "::json"


def request_statement(groups: Sequence[Group]) -> str | None:
    """One statement: each input's request body (input transform) and headers, as text.

    Rows: (k, n, body, headers), n the input's position (1-based) in its group.
    """
    branches = []
    for g in groups:
        if g.input_fn is None and g.header_fn is None:
            continue
        mid = quote_literal(g.model.model_id)
        # The contracts: (model_id varchar(100), input_text text) for embeddings (and the
        # header function of a text_embedding model, as registered), (model_id text, input json)
        text_input = g.kind == "embedding" or g.model.model_type == "text_embedding"
        args = f"{mid}::varchar, x.i" if text_input else f"{mid}::text, x.i::json"
        body = f"({g.input_fn}({args}))::text" if g.input_fn else "NULL::text"
        headers = f"({g.header_fn}({args}))::text" if g.header_fn else "NULL::text"
        branches.append(
            f"SELECT {g.k}, x.n, {body}, {headers} "
            f"FROM json_array_elements_text({_json_literal(g.inputs)}) WITH ORDINALITY AS x(i, n)"
        )
    return " UNION ALL ".join(branches) or None


def response_statement(groups: Sequence[tuple[Group, Sequence[str]]]) -> str:
    """One statement applying each group's output transform to its responses (JSON texts).

    Rows: (k, n, type of the result, result as JSON). OFFSET 0 keeps the function from being
    evaluated once per use of its result.
    """
    branches = []
    for g, responses in groups:
        mid = quote_literal(g.model.model_id)
        array = quote_literal("[" + ",".join(responses) + "]") + "::json"
        branches.append(
            f"SELECT {g.k}, s.n, pg_typeof(s.v)::text, to_json(s.v)::text FROM "
            f"(SELECT x.n, {g.output_fn}({mid}::varchar, x.r) AS v "
            f"FROM json_array_elements({array}) WITH ORDINALITY AS x(r, n) OFFSET 0) AS s"
        )
    return " UNION ALL ".join(branches)


# -- running it -------------------------------------------------------------------------------


async def answer(
    calls: Sequence[Call],
    models: Mapping[str, ModelConfig],
    run: RunFn,
    engine: TransformEngine,
    deadline: float | None,
) -> list[dict[str, Any]]:
    """The results-store rows for calls of models with user transform or header functions.

    `calls` are distinct; `models` holds every call's model. Raises PredictionError, and the
    engine's ModelCallError for failed requests.
    """
    rows: list[dict[str, Any]] = []
    dimensions: dict[str, list[float]] = {}
    ordered = sorted(calls, key=lambda c: (c.kind, c.model_id))
    for start in range(0, len(ordered), CHUNK_CALLS):
        groups = plan(ordered[start : start + CHUNK_CALLS], models)
        await _requests(groups, run)
        await _send(groups, engine, deadline)
        await _outputs(groups, run)
        for g in groups:
            for text, value in zip(g.inputs, g.answers, strict=True):
                if g.kind == "embedding":
                    rows.append(
                        {"fn": g.kind, "m": g.model.model_id, "i": text, "e": value, "r": None}
                    )
                    dimensions.setdefault(g.model.model_id, value)
                else:
                    rows.append(
                        {"fn": g.kind, "m": g.model.model_id, "i": text, "e": None, "r": value}
                    )
    # The model's dimension, for collect-mode placeholders
    rows += [{"fn": None, "m": m, "i": None, "e": v, "r": None} for m, v in dimensions.items()]
    return rows


async def _requests(groups: Sequence[Group], run: RunFn) -> None:
    """Evaluate the input transforms and header functions of every input, in one statement."""
    sql = request_statement(groups)
    if sql is None:
        return
    reply = await run(sql)
    if reply.error is not None:
        raise _server_error(reply.error)
    results: dict[tuple[int, int], tuple[str | None, str | None]] = {
        (int(k or 0), int(n or 0)): (body, headers) for k, n, body, headers in reply.rows
    }
    for g in groups:
        if g.input_fn is None and g.header_fn is None:
            continue
        for i in range(1, len(g.inputs) + 1):
            body, headers = results.get((g.k, i), (None, None))
            if g.input_fn is not None:
                g.bodies.append(
                    _checked(
                        check_body, g, "input transform function", g.model.input_transform_fn, body
                    )
                )
            if g.header_fn is not None:
                g.headers.append(
                    _checked(check_headers, g, "header function", g.model.header_gen_fn, headers)
                )


def _checked(check: Callable[..., Any], g: Group, what: str, name: str | None, *values: Any) -> Any:
    try:
        return check(*values)
    except BadResult as bad:
        raise PredictionError(
            f'model "{g.model.model_id}": {what} {name} {bad.what}', bad.sqlstate
        ) from None


async def _send(groups: Sequence[Group], engine: TransformEngine, deadline: float | None) -> None:
    """All the groups' HTTP requests, concurrently; each group's `answers` in input order."""
    jobs: list[Coroutine[Any, Any, None]] = []
    for g in groups:
        g.answers = [None] * len(g.inputs)
        if g.mode == TRANSFORM:
            jobs += _transform_jobs(g, engine, deadline)
        elif g.mode == NATIVE:
            jobs += _native_jobs(g, engine, deadline)
        else:
            jobs += _predict_jobs(g, engine, deadline)
    await _all(jobs)


def _header_key(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(headers.items()))


def _transform_jobs(
    g: Group, engine: TransformEngine, deadline: float | None
) -> list[Coroutine[Any, Any, None]]:
    """One request per distinct (body, headers); answers are the raw JSON responses, as text."""
    positions: dict[tuple[str, tuple[tuple[str, str], ...]], list[int]] = {}
    for n, body in enumerate(g.bodies):
        headers = g.headers[n] if g.headers else {}
        positions.setdefault((body, _header_key(headers)), []).append(n)

    async def one(body: str, headers: dict[str, str], where: list[int]) -> None:
        response = await engine.predict(g.model, body, headers=headers or None, deadline=deadline)
        text = _json_text(response)
        for n in where:
            g.answers[n] = text

    return [one(body, dict(key), where) for (body, key), where in positions.items()]


def _native_jobs(
    g: Group, engine: TransformEngine, deadline: float | None
) -> list[Coroutine[Any, Any, None]]:
    """The provider's batched requests; texts with the same headers share them."""
    by_headers: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for n in range(len(g.inputs)):
        by_headers.setdefault(_header_key(g.headers[n] if g.headers else {}), []).append(n)

    async def batch(headers: dict[str, str], where: list[int]) -> None:
        vectors = await engine.embed(
            g.model, [g.inputs[n] for n in where], headers=headers or None, deadline=deadline
        )
        for n, vector in zip(where, vectors, strict=True):
            g.answers[n] = vector

    return [batch(dict(key), where) for key, where in by_headers.items()]


def _predict_jobs(
    g: Group, engine: TransformEngine, deadline: float | None
) -> list[Coroutine[Any, Any, None]]:
    """Each request body as it is, with its headers."""

    async def one(n: int) -> None:
        headers = g.headers[n] if g.headers else None
        # predict_row returns the response as the provider sent it (JSON text).
        g.answers[n] = await engine.predict(
            g.model, g.inputs[n], headers=headers or None, deadline=deadline, raw=g.kind == "predict_row"
        )

    return [one(n) for n in range(len(g.inputs))]


async def _outputs(groups: Sequence[Group], run: RunFn) -> None:
    """Apply the output transforms to every response, in one statement."""
    transformed = [g for g in groups if g.mode == TRANSFORM]
    if not transformed:
        return
    # Each distinct response once per group
    work: list[tuple[Group, list[str]]] = []
    indexes: dict[int, list[int]] = {}
    for g in transformed:
        unique: dict[str, int] = {}
        indexes[g.k] = [unique.setdefault(text, len(unique)) for text in g.answers]
        work.append((g, list(unique)))
    reply = await run(response_statement(work))
    if reply.error is not None:
        raise _server_error(reply.error)
    results: dict[tuple[int, int], tuple[str | None, str | None]] = {
        (int(k or 0), int(n or 0)): (type_name, value) for k, n, type_name, value in reply.rows
    }
    for g, responses in work:
        vectors = [
            _checked(
                check_vector,
                g,
                "output transform function",
                g.model.output_transform_fn,
                *results.get((g.k, i), (None, None)),
            )
            for i in range(1, len(responses) + 1)
        ]
        g.answers = [vectors[i] for i in indexes[g.k]]


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: integers beyond 64 bits
        return json.dumps(value, ensure_ascii=False)


async def _all(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run the jobs concurrently; the first failure cancels the others and is raised."""
    if len(jobs) == 1:
        await jobs[0]
        return
    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(job)
    except BaseExceptionGroup as failures:
        raise _first(failures) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


def _server_error(fields: Mapping[str, str]) -> PredictionError:
    """An error the database raised while running the model's functions, passed through."""
    return PredictionError(fields.get("M", "error"), fields.get("C", "XX000"), fields.get("D"))
