"""Pre-warming the session's results store before a statement that calls models is forwarded.

DESIGN.md §2: the prediction functions only look answers up, so before the client's
statement reaches the server the proxy must have stored every call's answer:

- constant calls: their arguments are evaluated in the database (`SELECT (arg)::text, ...`),
  one round trip;
- row-dependent calls: a collect run executes the statement itself inside a savepoint (or a
  transaction) that is rolled back, with `pg_model_proxy.collect = on`: each miss reports
  its arguments in a NOTICE (SQLSTATE PX002) and a placeholder flows on. If the placeholder
  does not fit (a vector(n) cast of an unknown dimension), the calls seen so far are
  answered, the model's dimension is recorded, and the run is repeated;
- then the models are called (deduplicated, batched, concurrent: the engine) and the answers
  stored in one INSERT, and the original statement goes on untouched.

Errors a user can act on (unknown model, provider errors, timeouts) are raised *by the
server* through a replacement statement (`error_statement`), so the client's transaction
fails exactly as it would for any SQL error.

This module holds no socket: the session gives it `query`, which runs a statement of the
proxy's own in the client's session (and, for collect runs, returns the PX002 notices).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .engine.errors import ModelCallError, ModelConfigError
from .engine.models import COLUMNS
from .providers.registry import native_embedding
from .secrets.credentials import SecretModelConfig
from .sql.calls import CallSite, argument_columns, arguments_query, collect_refusal
from .wire.copy_binary import copy_data

log = logging.getLogger(__name__)

UNANSWERED_CALL = "PX001"  # a call with no stored answer (the statement was not pre-warmed)
COLLECT_NOTICE = "PX002"
MAX_COLLECT_RUNS = 3
STORE_CHUNK_ROWS = 2000  # answers per COPY into the results store
SMALL_STORE_ROWS = 16  # up to this many answers: one INSERT, no COPY
MAX_ARGUMENT_COLUMNS = 400  # beyond, constant calls are evaluated one row per call


@dataclass
class Reply:
    rows: list[tuple[str | None, ...]] = field(default_factory=list)
    notices: list[dict[str, str]] = field(default_factory=list)  # captured NoticeResponse fields
    error: dict[str, str] | None = None  # ErrorResponse fields


class QueryFn(Protocol):
    """query(sql, capture_notices, copy) -> Reply: a statement of the proxy's own in the session
    (`copy`: CopyData..CopyDone for a COPY FROM STDIN)."""

    def __call__(self, sql: str, capture_notices: bool, copy: bytes | None = None) -> Awaitable[Reply]: ...


class ModelEngine(Protocol):
    def deadline_in(self, seconds: float | None) -> float | None: ...
    async def embed(
        self, model: Any, texts: Sequence[str], *, headers: Any = None, deadline: float | None = None
    ) -> list[list[float]]: ...
    async def predict(
        self, model: Any, body: Any, *, headers: Any = None, deadline: float | None = None, raw: bool = False
    ) -> Any: ...


@dataclass(frozen=True)
class Statement:
    """One statement to pre-warm: its SQL (bind values as literals), its visible call sites,
    whether it reaches hidden calls, and why a collect run is impossible for it (if so)."""

    sql: str
    sites: list[CallSite]
    hidden: bool = False
    collect_refusal: str | None = None


class PredictionError(Exception):
    """A call cannot be answered: becomes an SQL error the server raises for the statement."""

    def __init__(self, message: str, sqlstate: str = "38000", detail: str | None = None) -> None:
        super().__init__(message)
        self.message, self.sqlstate, self.detail = message, sqlstate, detail


@dataclass(frozen=True)
class Call:
    kind: str  # embedding | predict_row
    model_id: str
    input: str


def quote_literal(text: str) -> str:
    """A dollar-quoted literal whose tag cannot occur in the text."""
    while True:
        tag = "pgmp" + secrets.token_hex(4)
        if f"${tag}$" not in text:
            return f"${tag}${text}${tag}$"


def error_statement(error: PredictionError, parameters: int = 0) -> str:
    """A statement that makes the server raise `error` in the client's session.

    With `parameters` (a prepared statement's $1..$n), the statement accepts them all, so the
    client's Bind still fits and the error is the one it gets.
    """
    if parameters:
        args = ", ".join(f"${n}::text" for n in range(1, parameters + 1))
        return (
            f"SELECT google_ml._raise({quote_literal(error.message)}, {quote_literal(error.sqlstate)}, {args})"
        )
    parts = [f"ERRCODE = {quote_literal(error.sqlstate)}"]
    if error.detail:
        parts.append(f"DETAIL = {quote_literal(error.detail)}")
    return (
        "DO $pgmp_err$ BEGIN RAISE EXCEPTION '%', "
        f"{quote_literal(error.message)} USING {', '.join(parts)}; END $pgmp_err$"
    )


class Prewarmer:
    """Answers a statement's model calls into the session's results store."""

    def __init__(self, query: QueryFn, engine: ModelEngine, *, in_transaction: bool) -> None:
        self.query = query
        self.engine = engine
        self.in_transaction = in_transaction
        # When the statement's model calls must be answered: its statement_timeout (read in
        # the first statement of the proxy's own) from now; None: no limit.
        self.deadline: float | None = None
        self._timeout_read = False
        self._models: dict[str, SecretModelConfig] = {}
        self._store_ready = False
        self.seen: list[Call] = []  # every call met so far (to store an error for, if need be)

    async def prepare(
        self, sql: str, sites: list[CallSite], *, hidden: bool = False, collect_refusal: str | None = None
    ) -> None:
        """Store answers for every call `sql` will make; raises PredictionError.

        `hidden`: the statement reaches calls in views, triggers, generated columns or
        functions (sql.hiding), which only a collect run finds. `collect_refusal`: why a
        collect run cannot be done for this statement here, if it cannot.
        """
        await self.prepare_many([Statement(sql, sites, hidden, collect_refusal)])

    async def prepare_many(self, statements: list[Statement]) -> None:
        """`prepare` for the statements of a pipeline (e.g. an executemany's Binds) at once:
        one evaluation of every constant call, one collect run per statement that needs
        one, and the models called for all of them together."""
        constant = [s for st in statements for s in st.sites if s.constant]
        if constant:
            await self._answer(await self._evaluate(constant))
        rest = [st for st in statements if st.hidden or not all(s.constant for s in st.sites)]
        if not rest:
            return
        for st in rest:
            refusal = st.collect_refusal or collect_refusal(st.sql)  # parsed only when needed
            if refusal is not None:
                raise PredictionError(f"pg-model-proxy: {refusal}", "0A000")
        await self._read_timeout()
        derived_calls: list[Call] = []
        collect: list[str] = []
        for st in rest:
            derived = None if st.hidden else arguments_query(st.sql)
            if derived is not None:
                derived_calls += await self._arguments(*derived)
            else:
                collect.append(st.sql)
        await self._answer(derived_calls)
        if collect:
            await self._collect(collect)

    async def store_error(self, error: PredictionError) -> bool:
        """Store `error` as the answer of every call seen, so each raises it when it runs.

        For a Bind, which cannot be swapped for an error statement. False if no call was seen.
        """
        calls = list(dict.fromkeys(self.seen))
        if not calls:
            return False
        failure = {"message": error.message, "sqlstate": error.sqlstate}
        await self._store(
            [{"fn": c.kind, "m": c.model_id, "i": c.input, "e": None, "r": None, "err": failure} for c in calls]
        )
        return True

    async def _own(self, sql: str, copy: bytes | None = None) -> Reply:
        """A statement of the proxy's own that, failing, must not abort the client's transaction."""
        log.debug("own statement: %.80s", sql)
        if not self.in_transaction:
            return await self.query(sql, False, copy)
        reply = await self.query(f"SAVEPOINT pgmp_own; {sql}", False, copy)
        await self.query(
            "ROLLBACK TO SAVEPOINT pgmp_own; RELEASE SAVEPOINT pgmp_own"
            if reply.error is not None
            else "RELEASE SAVEPOINT pgmp_own",
            False,
        )
        return reply

    async def _evaluate(self, sites: list[CallSite]) -> list[Call]:
        if all(s.values is not None for s in sites):
            # String literals: the calls are known as written (the timeout comes with the models).
            return [Call(s.kind, *s.values) for s in sites if s.values is not None]
        if len(sites) > MAX_ARGUMENT_COLUMNS // 2:
            # Many calls (a pipeline's): one row each, as PostgreSQL caps a row's columns.
            await self._read_timeout()
            values = ", ".join(
                f"({quote_literal(s.kind)}, ({m})::text, ({i})::text)" for s in sites for m, i in [s.arguments]
            )
            reply = await self._own(f"SELECT * FROM (VALUES {values}) AS v(kind, m, i)")
            if reply.error is not None:
                raise _server_error(reply.error)
            return [Call(str(k), m, i) for k, m, i in reply.rows if m is not None and i is not None]
        if self._timeout_read:
            return await self._arguments(f"SELECT {argument_columns(sites)}", [s.kind for s in sites])
        # The session's statement_timeout comes along in the same round trip.
        return await self._arguments(
            f"SELECT {argument_columns(sites)}, current_setting('statement_timeout')", [s.kind for s in sites]
        )

    async def _read_timeout(self) -> None:
        if not self._timeout_read:
            reply = await self._own("SELECT current_setting('statement_timeout')")
            if reply.error is not None:
                raise _server_error(reply.error)
            self._set_deadline(reply.rows[0][0] if reply.rows else None)

    def _set_deadline(self, setting: str | None) -> None:
        self._timeout_read = True
        milliseconds = timeout_ms(setting)
        if milliseconds:
            self.deadline = self.engine.deadline_in(milliseconds / 1000)

    async def _arguments(self, query: str, kinds: list[str]) -> list[Call]:
        """The calls a read-only arguments query finds (two columns per call, per row)."""
        reply = await self._own(query)
        if reply.error is not None:
            raise _server_error(reply.error)
        if not self._timeout_read:
            self._set_deadline(reply.rows[0][-1] if reply.rows else None)
        calls = []
        for row in reply.rows:
            for n, kind in enumerate(kinds):
                model_id, text = row[2 * n], row[2 * n + 1]
                if model_id is not None and text is not None:
                    calls.append(Call(kind, model_id, text))
        return calls

    async def _collect(self, statements: list[str]) -> None:
        """Collect runs of each statement, then the models called once for all they found."""
        begin, end = (
            ("SAVEPOINT pgmp_collect", "ROLLBACK TO SAVEPOINT pgmp_collect; RELEASE SAVEPOINT pgmp_collect")
            if self.in_transaction
            else ("BEGIN", "ROLLBACK")
        )
        pending = statements
        for _ in range(MAX_COLLECT_RUNS):
            await self._ensure_store()
            found: list[Call] = []
            failed: list[str] = []
            for sql in pending:
                reply = await self.query(f"{begin}; SET LOCAL pg_model_proxy.collect = on; {sql}", True)
                await self.query(end, False)
                calls = [_call_from_notice(n) for n in reply.notices if n.get("C") == COLLECT_NOTICE]
                seen = [c for c in calls if c is not None]
                found += seen
                if reply.error is not None and seen:
                    # A placeholder that did not fit (fixed by the dimensions about to be
                    # recorded), or a genuine error the real run will report: run it again.
                    log.debug("collect run failed (%s); retrying", reply.error.get("M"))
                    failed.append(sql)
            await self._answer(found)
            pending = failed
            if not pending:
                return

    async def _answer(self, calls: list[Call]) -> None:
        if not calls:
            return
        unique = list(dict.fromkeys(calls))
        self.seen.extend(unique)
        await self._load_models({c.model_id for c in unique})
        from . import transforms  # (it imports this module)

        embeddings: dict[str, list[Call]] = {}
        predictions: list[Call] = []
        user_functions: list[Call] = []  # models with transform or header functions to run
        for call in unique:
            model = self._models[call.model_id]
            if call.kind == "embedding":
                if model.model_type != "text_embedding" and model.model_type != "multimodal_embedding":
                    raise PredictionError(
                        f"model {call.model_id} is not a text_embedding model", "22023"
                    )
                if not native_embedding(model):
                    user_functions.append(call)
                    continue
                embeddings.setdefault(call.model_id, []).append(call)
            elif transforms.user_header_fn(model) is not None:
                user_functions.append(call)
            else:
                predictions.append(call)
        rows: list[dict[str, Any]] = []
        try:
            if user_functions:
                rows += await transforms.answer(user_functions, self._models, self._own, self.engine, self.deadline)
            for model_id, group in embeddings.items():
                vectors = await self.engine.embed(
                    self._models[model_id], [c.input for c in group], deadline=self.deadline
                )
                rows += [
                    {"fn": "embedding", "m": c.model_id, "i": c.input, "e": v, "r": None}
                    for c, v in zip(group, vectors, strict=True)
                ]
                rows.append({"fn": None, "m": model_id, "i": None, "e": vectors[0], "r": None})
            # The body goes as the JSON text the caller gave, and the answer comes back as the
            # provider's JSON text; the calls run concurrently (the engine bounds each model).
            answers = await _concurrently(
                [
                    self.engine.predict(self._models[c.model_id], c.input, deadline=self.deadline, raw=True)
                    for c in predictions
                ]
            )
            rows += [
                {"fn": "predict_row", "m": c.model_id, "i": c.input, "e": None, "r": answer}
                for c, answer in zip(predictions, answers, strict=True)
            ]
        except ModelCallError as exc:
            raise PredictionError(str(exc), exc.sqlstate) from exc
        log.debug("storing %d answer(s)", len(rows))
        await self._store(rows)
        log.debug("stored")

    async def _load_models(self, model_ids: set[str]) -> None:
        missing = sorted(model_ids - self._models.keys())
        if not missing:
            return
        ids = ", ".join(quote_literal(m) for m in missing)
        columns = ", ".join(f"m.{c}::text" for c in COLUMNS)
        # One row at least (NULL model columns when none exists), for the statement_timeout.
        reply = await self._own(
            f"SELECT {columns}, s.secret_path, t.timeout "
            "FROM (SELECT current_setting('statement_timeout') AS timeout) t "
            "LEFT JOIN (google_ml.models m LEFT JOIN google_ml.sm_secrets s ON s.secret_id = m.model_auth_id) "
            f"ON m.model_id IN ({ids})"
        )
        if reply.error is not None:
            raise _server_error(reply.error)
        if not self._timeout_read and reply.rows:
            self._set_deadline(reply.rows[0][-1])
        for row in reply.rows:
            values = dict(zip((*COLUMNS, "secret_path"), row[:-1], strict=True))
            if values["model_id"] is not None:
                self._models[str(values["model_id"])] = SecretModelConfig.from_row(values)
        for model_id in missing:
            if model_id not in self._models:
                raise PredictionError(f"Model does not exist for model_id: {model_id}", "42704")

    async def _ensure_store(self) -> None:
        if not self._store_ready:
            reply = await self._own("SELECT google_ml._results_store()")
            if reply.error is not None:
                raise _server_error(reply.error)
            self._store_ready = True

    async def _store(self, rows: list[dict[str, Any]]) -> None:
        """Put the answers in the results store: one round trip for a few, binary COPY for many."""
        if len(rows) <= SMALL_STORE_ROWS:
            # The store is created (if needed) in the same Query: each statement of a
            # simple Query is analysed only when its turn comes.
            payload = quote_literal(orjson.dumps(rows).decode())
            reply = await self._own(
                "SELECT google_ml._results_store(); "
                "INSERT INTO pg_temp.google_ml_results (key, embedding, response, error) "
                "SELECT CASE WHEN x.fn IS NULL THEN 'dim:' || x.m ELSE google_ml._call_key(x.fn, x.m, x.i) END, "
                f"x.e, x.r::json, x.err FROM json_to_recordset({payload}::json) "
                "AS x(fn text, m text, i text, e real[], r text, err json) "
                "ON CONFLICT (key) DO UPDATE SET embedding = EXCLUDED.embedding, response = EXCLUDED.response, "
                "error = EXCLUDED.error"
            )
            if reply.error is not None:
                raise _server_error(reply.error)
            self._store_ready = True
            return
        await self._ensure_store()
        for start in range(0, len(rows), STORE_CHUNK_ROWS):
            chunk = rows[start : start + STORE_CHUNK_ROWS]
            payload_bytes = copy_data(
                (
                    r["fn"], r["m"], r["i"], r["e"],
                    r["r"],  # predict_row's answer: the provider's JSON text, as it came
                    None if r.get("err") is None else orjson.dumps(r["err"]).decode(),
                )
                for r in chunk
            )
            reply = await self._own(
                "COPY pg_temp.google_ml_load (fn, model_id, input, embedding, response, error) "
                "FROM STDIN (FORMAT binary)",
                payload_bytes,
            )
            if reply.error is not None:
                raise _server_error(reply.error)
            reply = await self._own(
                "INSERT INTO pg_temp.google_ml_results (key, embedding, response, error) "
                "SELECT CASE WHEN fn IS NULL THEN 'dim:' || model_id "
                "ELSE google_ml._call_key(fn, model_id, input) END, embedding, response, error "
                "FROM pg_temp.google_ml_load "
                "ON CONFLICT (key) DO UPDATE SET embedding = EXCLUDED.embedding, response = EXCLUDED.response, "
                "error = EXCLUDED.error; "
                "TRUNCATE pg_temp.google_ml_load"
            )
            if reply.error is not None:
                raise _server_error(reply.error)


_UNITS_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def timeout_ms(setting: str | None) -> int:
    """statement_timeout as current_setting() shows it ('0', '250ms', '5s', '2min') in ms."""
    if not setting:
        return 0
    number = setting.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        return int(float(number) * _UNITS_MS.get(setting[len(number):] or "ms", 1))
    except ValueError:
        return 0


async def _concurrently(calls: list[Awaitable[Any]]) -> list[Any]:
    """Await the calls concurrently, in order; the first error cancels the rest."""
    if len(calls) <= 1:
        return [await c for c in calls]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(c)) for c in calls]
    except BaseExceptionGroup as failures:
        first = failures.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


async def _awaited(call: Awaitable[Any]) -> Any:
    return await call


def _call_from_notice(fields: dict[str, str]) -> Call | None:
    try:
        data = json.loads(fields.get("D", ""))
        return Call(str(data["fn"]), str(data["model_id"]), str(data["input"]))
    except (ValueError, KeyError, TypeError):
        return None


def _server_error(fields: dict[str, str]) -> PredictionError:
    return PredictionError(fields.get("M", "error"), fields.get("C", "XX000"), fields.get("D"))


__all__ = ["Prewarmer", "PredictionError", "Reply", "error_statement", "ModelConfigError"]
