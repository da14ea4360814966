"""One client connection and the server connection it is paired with (1:1).

The session is the client leg's asyncio protocol. It reads the startup packets
(SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), opens the server leg,
and from then on relays bytes both ways untouched. It watches the stream only
through two `MessageScanner`s and a `QueryCycle`, which tell it where message
boundaries are and whether a query is in flight: enough to cancel a query whose
client vanished, to refuse garbage with a proper ErrorResponse, and to shut down
without cutting a running statement.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import struct
from collections import deque
from collections.abc import Coroutine, Iterable
from enum import Enum, auto
from typing import TYPE_CHECKING, Any, cast

from . import upstream
from .intercept import BIND, PARSE, QUERY, Forward, Held, split
from .prediction import (
    UNANSWERED_CALL,
    PredictionError,
    Prewarmer,
    Reply,
    Statement,
    error_statement,
    quote_literal,
)
from .sql.calls import CallSite, find_calls, may_call_models, sql_statements
from .sql.hiding import CATALOG_QUERY, HidingCatalog, may_change_catalog
from .sql.rewrite import Rewriter, may_need_rewrite
from .wire import messages as m
from .wire.bind import (
    UnsupportedParameter,
    literal,
    parameter_types,
    parse_bind,
    parse_statement_name,
    statement_name,
)
from .wire.cycle import QueryCycle
from .wire.errors import ProtocolViolation
from .wire.framing import MessageScanner
from .wire.replies import ReplyCollector, ServerError
from .wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    read_startup_packet,
)

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger(__name__)

_TERMINATE = m.TERMINATE[0]
_BACKEND_KEY_DATA = m.BACKEND_KEY_DATA[0]
_ERROR_RESPONSE = m.ERROR_RESPONSE[0]
_READY_FOR_QUERY = m.READY_FOR_QUERY[0]
_PARAMETER_STATUS = m.PARAMETER_STATUS[0]
_COMMAND_COMPLETE = ord("C")
_STATEMENT_DONE = frozenset(b"CI")  # CommandComplete, EmptyQueryResponse
# Query, Parse and Bind bodies are kept (up to this size) for the cheap interception test.
INSPECT_LIMIT = 1 << 20
_CLIENT_NOTE = bytes(t for t in QueryCycle.FRONTEND_NOTE if t not in b"QPB")
_SERVER_KEEP = QueryCycle.BACKEND_KEEP + b"KES"  # + BackendKeyData, ErrorResponse, ParameterStatus
_BIND_PARAMETER = re.compile(r"\$(\d+)")
_SQL_TYPES = (QUERY, PARSE)
_EXTENSION_PROBE = (
    "SELECT count(*) FROM pg_catalog.pg_available_extensions WHERE name = 'google_ml_integration'"
)


# A prepared statement with model calls: its SQL, parameter types, and whether calls hide.
_BindEntry = tuple[str, tuple[int, ...], bool]
READ_AHEAD_LIMIT = 64 << 20  # bytes of a pipeline read ahead to pre-warm all its Binds
_PIPELINE_END = frozenset(b"SH")  # Sync, Flush: the client may wait for answers there


def _pipeline_ends(segments: Iterable[Forward | Held]) -> bool:
    """Do these queued segments reach the end of the client's pipeline?"""
    for segment in segments:
        if isinstance(segment, Forward):
            if any(type_code in _PIPELINE_END for type_code, _ in segment.events):
                return True
        elif segment.type_code == QUERY:
            return True
    return False


class ClientCancel(PredictionError):
    """The client cancelled the statement while its model calls were being made."""


def _worth_holding(body: bytes) -> bool:
    """Cheap test: might this Query/Parse need rewriting or model calls?"""
    return may_need_rewrite(body) or may_call_models(body)


class State(Enum):
    STARTUP = auto()  # reading untyped startup packets
    TLS_HANDSHAKE = auto()  # answered 'S', upgrading the client leg
    CONNECTING = auto()  # got the StartupMessage, opening the server leg
    RELAY = auto()  # authentication and queries: bytes flow both ways
    CLOSED = auto()


class Session(asyncio.Protocol):
    """The client leg of one proxied connection, and the relay between the two legs."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.settings = server.settings
        self.state = State.STARTUP
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.peer = "?"
        self.startup: StartupMessage | None = None
        self.cancel_key: tuple[int, bytes] | None = None
        self.server_major = 0  # from the server's ParameterStatus server_version
        self.cycle = QueryCycle()
        self.client_scanner = MessageScanner(
            note=_CLIENT_NOTE,
            keep=b"QPB",
            keep_limit=INSPECT_LIMIT,
            frontend=True,
            oversize_ok=True,
            track_offsets=True,
        )
        self.server_scanner = MessageScanner(keep=_SERVER_KEEP)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()  # client bytes read before the relay starts
        self._tls = False
        self._authenticated = False
        self._server_sent_fatal = False
        self._client_terminated = False
        # Set when the session must end once the server has answered what it was sent:
        # the error the client then gets, and whether every Sync must be answered too.
        self._deferred_error: bytes | None = None
        self._deferred_until_idle = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.admitted = False  # counted against max_clients
        # Interception (the slow path): client segments waiting their turn, the message
        # being inspected, the proxy's own statement in flight, and command tags to restore.
        self._queue: deque[Forward | Held] = deque()
        self._inspecting: asyncio.Task[None] | None = None
        self._own: ReplyCollector | None = None
        self._own_done: asyncio.Future[None] | None = None
        self._own_copy: bytes | None = None  # COPY data for the proxy's own COPY FROM STDIN
        self._idle_waiter: asyncio.Future[None] | None = None
        # Per statement of rewritten messages still to answer: the tag to restore, or None.
        self._tag_rewrites: deque[bytes | None] = deque()
        self._upstream_full = False
        # The pre-warm of a statement's model calls, and whether the client asked to cancel it.
        self._prewarm_task: asyncio.Task[None] | None = None
        self._cancel_requested = False
        # Prepared statements whose model calls take bind parameters: name -> (SQL, parameter
        # types); their Binds are held to pre-warm with the values. A Parse followed by its
        # Bind in the same batch waits for it (its statement could not survive a Query).
        self._bind_calls: dict[bytes, _BindEntry] = {}
        self._deferred_parse: Held | None = None
        # DDL went through this session: the hiding catalog is reloaded again when its
        # transaction ends (other sessions see the change only then).
        self._catalog_changed = False
        # The Query in flight, while none of its reply has reached the client and it ran
        # outside a transaction: if it fails on a call the proxy did not foresee (PX001), the
        # proxy can run it again after a collect run, and the client never sees the miss.
        self._retry_candidate: bytes | None = None
        self._unforeseen_miss = False
        self._held_reply: bytearray | None = None  # its failed reply, until ReadyForQuery
        # Reading a pipeline ahead to its Sync (see _read_pipeline): done when it is queued.
        self._read_ahead: asyncio.Future[None] | None = None
        self._read_ahead_bytes = 0

    # --- client leg: asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance here.
        self.client = cast(asyncio.Transport, transport)
        self.client.set_write_buffer_limits(high=self.settings.buffer_size)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.session_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.state is State.RELAY:
            if self._deferred_error is None:  # else: closing, the client is not heard any more
                self._relay_client_data(data)
        elif self.state is State.STARTUP:
            self._buffer += data
            self._read_startup_packets()
        elif self.state is not State.CLOSED:
            # CONNECTING / TLS_HANDSHAKE: reading is paused, but a chunk can race the pause.
            self._buffer += data
            if len(self._buffer) > m.MAX_STARTUP_PACKET_LENGTH:
                self._fail(ProtocolViolation("too much data before the server connection was ready"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is State.CLOSED:
            return
        if exc is not None:
            log.debug("client %s: connection lost: %s", self.peer, exc)
        self._client_gone()

    def pause_writing(self) -> None:
        # The client reads slower than the server answers: stop reading the server.
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.state is State.RELAY:
            self.upstream.resume_reading()

    # --- server leg: called by upstream.ServerConnection -------------------------------

    def server_data(self, data: bytes) -> None:
        if self._own is not None:
            data = self._own_reply(data)
            if not data:
                return
        try:
            events = self.server_scanner.feed(data)
        except ProtocolViolation as exc:
            log.error("client %s: server sent an invalid message: %s", self.peer, exc)
            self._close(client_error=None)
            return
        if events:
            if self._tag_rewrites:
                data = self._restore_tags(data, events)
            self._server_events(events)
            if self._unforeseen_miss or self._held_reply is not None:
                data = self._hold_for_retry(data, events)
                if not data:
                    return  # held until ReadyForQuery, or run again: the client never sees it
        self._retry_candidate = None  # part of the reply reaches the client
        if self.client is not None and self.state is not State.CLOSED:
            self.client.write(data)
            if self._deferred_error is not None and self._deferred_done():
                self._close(client_error=self._deferred_error)
            if self._idle_waiter is not None and not self.cycle.pending and not self._idle_waiter.done():
                self._idle_waiter.set_result(None)

    def server_lost(self, exc: Exception | None) -> None:
        if self.state is State.CLOSED:
            return
        if not self._client_terminated and not self._server_sent_fatal:
            log.warning("client %s: server closed the connection unexpectedly", self.peer)
            self._close(
                client_error=m.error_response(
                    "FATAL",
                    "08006",
                    "server closed the connection unexpectedly",
                    detail="The PostgreSQL server behind pg-model-proxy went away; "
                    "the proxy accepts new connections as soon as it is back.",
                )
            )
        else:
            self._close(client_error=None)

    def server_paused(self) -> None:
        self._upstream_full = True
        if self.client is not None:
            self.client.pause_reading()

    def server_resumed(self) -> None:
        self._upstream_full = False
        self._resume_client()

    def _resume_client(self) -> None:
        """Read the client again, unless something else still wants it paused."""
        if (
            self.client is not None
            and self.state is State.RELAY
            and self._deferred_error is None
            and not self._upstream_full
            and not self._queue
            and self._inspecting is None
        ):
            self.client.resume_reading()

    # --- the relay ---------------------------------------------------------------------

    def _relay_client_data(self, data: bytes) -> None:
        scanner = self.client_scanner
        violation = None
        try:
            events = scanner.feed(data)
        except ProtocolViolation as exc:
            # What came before the bad header is valid and is handled like any chunk.
            violation, events, data = exc, exc.events, data[: scanner.valid_prefix]
        # Only Query, Parse and Bind bodies are kept on this side.
        inspect = any(self._holds(t, body) for t, body in events) if events else False
        if not inspect and not self._queue and self._inspecting is None:
            if events:
                self._client_events(events)  # the fast path: relay the chunk as it came
            assert self.upstream is not None
            if data:
                self.upstream.write(data)
        else:
            hold = self._hold_list(events)
            segments = split(data, events, list(scanner.offsets), hold)
            self._queue.extend(segments)
            if self._read_ahead is not None and not self._read_ahead.done():
                self._read_ahead_bytes += len(data)
                if _pipeline_ends(segments) or self._read_ahead_bytes > READ_AHEAD_LIMIT:
                    self._read_ahead.set_result(None)
            self._drain()
        if violation is not None:
            self._fail(violation)

    def _holds(self, type_code: int, body: bytes | None) -> bool:
        """Cheap test for one message: hold it for inspection?"""
        if body is None:
            return False
        if type_code == BIND:
            return bool(self._bind_calls) and statement_name(body) in self._bind_calls
        if _worth_holding(body):
            return True
        catalog = self.server.hiding.get(self.database)
        return catalog is None or catalog.may_hide(body)  # None: not known yet, ask first

    def _hold_list(self, events: list[tuple[int, bytes | None]]) -> list[bool]:
        """Which messages of a chunk to hold; a Bind behind a held Parse of its statement too."""
        held_parses: set[bytes] = set()
        hold = []
        for type_code, body in events:
            flag = self._holds(type_code, body)
            if type_code == PARSE and flag and body is not None:
                held_parses.add(parse_statement_name(body))
            elif type_code == BIND and body is not None and not flag:
                flag = statement_name(body) in held_parses
            hold.append(flag)
        return hold

    def _drain(self) -> None:
        """Relay queued segments in order; a held message is inspected before what follows."""
        while self._queue and self._inspecting is None and self.state is State.RELAY:
            segment = self._queue.popleft()
            if isinstance(segment, Forward):
                self._client_events(segment.events)
                assert self.upstream is not None
                self.upstream.write(segment.data)
            else:
                task = asyncio.get_running_loop().create_task(self._inspect(segment))
                self._inspecting = task
                self._tasks.add(task)
                task.add_done_callback(self._inspected)
        if self._queue or self._inspecting is not None:
            if self.client is not None and (self._read_ahead is None or self._read_ahead.done()):
                self.client.pause_reading()  # bounded: nothing more is read meanwhile
        elif self._deferred_error is not None and self._deferred_done():
            self._close(client_error=self._deferred_error)
        else:
            self._resume_client()

    def _inspected(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inspecting = None
        if not task.cancelled() and task.exception() is not None:
            log.error("client %s: inspecting a statement failed", self.peer, exc_info=task.exception())
        if self.state is State.RELAY:
            self._drain()

    async def _inspect(self, held: Held) -> None:
        """Send a held Query/Parse on, rewritten if the proxy answers it differently."""
        if held.type_code == BIND:
            await self._inspect_bind(held)
            return
        catalog = await self._hiding_catalog()
        if self.state is not State.RELAY:
            return
        if held.type_code == PARSE and self._register_bind_calls(held, catalog):
            nxt = self._queue[0] if self._queue else None
            if (
                isinstance(nxt, Held)
                and nxt.type_code == BIND
                and statement_name(nxt.body) == parse_statement_name(held.body)
            ):
                self._deferred_parse = held  # goes on with its Bind, after the pre-warm
                return
            self.cycle.client_message(PARSE)
            assert self.upstream is not None
            self.upstream.write(held.raw)
            return
        rewrite = None
        try:
            emulated = await self._extension_emulated()
            rewrite = Rewriter(emulated=emulated, server_major=self.server_major).rewrite(held.sql())
        except (ValueError, ServerError) as exc:
            log.warning("client %s: statement passed on unchanged: %s", self.peer, exc)
        except Exception:
            log.exception("client %s: statement passed on unchanged", self.peer)
        if self.state is not State.RELAY:
            return
        error = await self._prewarm(held, catalog)
        if self.state is not State.RELAY:
            return
        self.cycle.client_message(held.type_code)
        self._note_ddl(held.body)
        assert self.upstream is not None
        if error is not None:
            # The server raises it for the statement: the client's transaction fails as usual.
            parameters = max((int(n) for n in _BIND_PARAMETER.findall(held.sql())), default=0)
            self.upstream.write(held.with_sql(error_statement(error, parameters)))
            return
        if rewrite is None:
            if held.type_code == QUERY and not held.retry:
                self._query_sent(held.body)
            self.upstream.write(held.raw)
            return
        if rewrite.tags:
            self._tag_rewrites.extend(t.encode() if t else None for t in rewrite.tags)
            self.server_scanner.keep_also(_SERVER_KEEP + b"CI", track_offsets=True)
        log.debug("client %s: statement rewritten", self.peer)
        self.upstream.write(held.with_sql(rewrite.sql))

    async def _prewarm(self, held: Held, catalog: HidingCatalog) -> PredictionError | None:
        """Answer the statement's model calls into the results store before it goes on."""
        sites, hidden = self._calls_of(held, catalog)
        hidden = hidden or held.retry
        if not sites and not hidden:
            return None
        if self.cycle.status == b"E":
            return None  # a failed transaction: the server gives its usual error
        sql = held.sql()
        prewarmer = Prewarmer(self.own_reply, self.server.model_engine(), in_transaction=self.cycle.status == b"T")
        return await self._run_prewarm(
            prewarmer.prepare(sql, sites, hidden=hidden)
        )

    @staticmethod
    def _calls_of(held: Held, catalog: HidingCatalog) -> tuple[list[CallSite], bool]:
        """A Query/Parse's visible call sites, and whether it reaches hidden calls."""
        visible, maybe_hidden = may_call_models(held.body), catalog.may_hide(held.body)
        if not visible and not maybe_hidden:
            return [], False
        sql = held.sql()
        return (find_calls(sql) if visible else []), maybe_hidden and catalog.hides_calls(sql)

    async def _hiding_catalog(self) -> HidingCatalog:
        """What hides model calls in this database: cached, or asked now (see sql.hiding)."""
        catalog = self.server.hiding.get(self.database)
        if catalog is not None:
            return catalog
        in_transaction = self.cycle.status == b"T"
        try:
            # In the client's transaction, a savepoint keeps a failure (a statement_timeout,
            # say) from aborting it.
            rows = await self.own_query(
                f"SAVEPOINT pgmp_catalog; {CATALOG_QUERY}; RELEASE SAVEPOINT pgmp_catalog"
                if in_transaction
                else CATALOG_QUERY
            )
        except ServerError as exc:
            log.warning("client %s: reading the catalog of hidden model calls failed: %s", self.peer, exc)
            if in_transaction:
                await self.own_query("ROLLBACK TO SAVEPOINT pgmp_catalog; RELEASE SAVEPOINT pgmp_catalog")
            return HidingCatalog()
        if rows is None:
            return HidingCatalog()  # cannot ask now (mid-batch or failed transaction)
        catalog = HidingCatalog.from_rows(rows)
        self.server.hiding.put(self.database, catalog)
        if catalog:
            log.debug("client %s: hidden model calls in %s", self.peer, catalog)
        return catalog

    @property
    def database(self) -> str:
        s = self.startup
        return (s.database or s.user or "") if s else ""

    async def _run_prewarm(self, preparation: Coroutine[Any, Any, None]) -> PredictionError | None:
        """Run a pre-warm as the task a CancelRequest can stop; its error, if any.

        A client's cancel gives ClientCancel (57014); any other cancellation propagates.
        """
        task = asyncio.get_running_loop().create_task(preparation)
        self._prewarm_task = task
        try:
            await task
        except PredictionError as exc:
            log.info("client %s: model call failed: %s", self.peer, exc.message)
            return exc
        except asyncio.CancelledError:
            if self._cancel_requested and self.state is State.RELAY:
                self._cancel_requested = False
                return ClientCancel("canceling statement due to user request", "57014")
            raise
        finally:
            self._prewarm_task = None
        return None

    def _register_bind_calls(self, held: Held, catalog: HidingCatalog) -> bool:
        """A Parse whose model calls take bind parameters, or are hidden: remember it for its
        Binds, each of which is pre-warmed with its values."""
        entry = self._bind_entry(held, catalog)
        if entry is None:
            return False
        self._bind_calls[parse_statement_name(held.body)] = entry
        return True

    def _bind_entry(self, parse: Held, catalog: HidingCatalog) -> _BindEntry | None:
        sites, hidden = self._calls_of(parse, catalog)
        if not hidden and not any(_BIND_PARAMETER.search(a) for site in sites for a in site.arguments):
            return None
        return parse.sql(), parameter_types(parse.body), hidden

    async def _inspect_bind(self, held: Held) -> None:
        """Pre-warm a prepared statement's model calls with this Bind's values, then send it."""
        name = statement_name(held.body)
        entry = self._bind_calls.get(name)
        deferred, self._deferred_parse = self._deferred_parse, None
        # Mid-batch (the Parse went earlier, e.g. asyncpg) the proxy's own Query is safe only
        # for a named statement: a Query drops the unnamed one.
        can_run = deferred is not None or bool(name)
        if entry is not None and not held.prewarmed and can_run and self.cycle.status != b"E":
            await self._prewarm_pipeline(held, entry, mid_batch=deferred is None)
        if self.state is not State.RELAY:
            return
        assert self.upstream is not None
        if deferred is not None:
            self.cycle.client_message(PARSE)
            self.upstream.write(deferred.raw)
        self.cycle.client_message(BIND)
        self.upstream.write(held.raw)

    async def _prewarm_pipeline(self, held: Held, entry: _BindEntry, *, mid_batch: bool) -> None:
        """Pre-warm this Bind, and every later Bind of its pipeline, before any of it runs.

        Outside a transaction a pipeline is one implicit transaction: a statement of the
        proxy's own in its middle would commit what ran before it, and a collect run's
        ROLLBACK would undo it. So the proxy reads the pipeline to its Sync (bounded) and
        answers all of its calls at once (batched, too), while nothing has run.
        """
        statements = [st for st in [self._bound_statement(held.body, entry)] if st is not None]
        if not self.cycle.executed:
            await self._read_pipeline()
            statements += self._queued_binds()
        elif self.cycle.status == b"I":
            log.info(
                "client %s: model calls in a pipeline past its read-ahead limit, outside a transaction: "
                "not pre-warmed (it would commit what the pipeline already ran)", self.peer,
            )
            return
        if not statements or self.state is not State.RELAY:
            return
        prewarmer = Prewarmer(
            functools.partial(self.own_reply, mid_batch=mid_batch),
            self.server.model_engine(),
            in_transaction=self.cycle.status == b"T",
        )
        error = await self._run_prewarm(prewarmer.prepare_many(statements))
        if error is not None and not isinstance(error, ClientCancel):
            await prewarmer.store_error(error)  # each call raises it when the statement runs

    def _bound_statement(self, body: bytes, entry: _BindEntry) -> Statement | None:
        """The statement a Bind runs, with its values as literals; None if they cannot be."""
        sql, types, hidden = entry
        try:
            bound = parse_bind(body)
            values = {
                n + 1: literal(v, bound.format_of(n), types[n] if n < len(types) else 0, quote_literal)
                for n, v in enumerate(bound.values)
            }
        except (UnsupportedParameter, ValueError, struct.error) as exc:
            log.info("client %s: bind values not usable for model calls: %s", self.peer, exc)
            return None
        concrete = _BIND_PARAMETER.sub(lambda m: values.get(int(m.group(1)), m.group(0)), sql)
        return Statement(concrete, find_calls(concrete), hidden)

    async def _read_pipeline(self) -> None:
        """Read the client's messages up to the pipeline's Sync or Flush into the queue
        (or READ_AHEAD_LIMIT bytes): the client waits for nothing before sending them."""
        if _pipeline_ends(self._queue) or self.client is None:
            return
        self._read_ahead = asyncio.get_running_loop().create_future()
        self._read_ahead_bytes = 0
        self.client.resume_reading()
        try:
            await self._read_ahead
        finally:
            self._read_ahead = None

    def _queued_binds(self) -> list[Statement]:
        """The queued Binds of this pipeline with model calls, marked pre-warmed."""
        known = dict(self._bind_calls)
        catalog = self.server.hiding.get(self.database) or HidingCatalog()
        found = []
        for segment in self._queue:
            if isinstance(segment, Forward):
                for type_code, body in segment.events:
                    if type_code == PARSE and body is not None:
                        known.pop(parse_statement_name(body), None)  # redefined, not held: no calls
                if _pipeline_ends([segment]):
                    break
            elif segment.type_code == QUERY:
                break
            elif segment.type_code == PARSE:
                name = parse_statement_name(segment.body)
                entry = self._bind_entry(segment, catalog)
                if entry is None:
                    known.pop(name, None)
                else:
                    known[name] = entry
            else:
                entry = known.get(statement_name(segment.body))
                statement = self._bound_statement(segment.body, entry) if entry is not None else None
                if statement is not None:
                    found.append(statement)
                    segment.prewarmed = True
        return found

    def cancel_model_calls(self) -> bool:
        """A CancelRequest for this session: stop its model calls. True if there were any."""
        if self._prewarm_task is None or self._prewarm_task.done():
            return False
        self._cancel_requested = True
        self._prewarm_task.cancel()
        return True

    async def _extension_emulated(self) -> bool:
        """Whether google_ml_integration is emulated on this server (asked once, then cached)."""
        mode = self.settings.extension_mode
        if mode != "auto":
            return mode == "emulated"
        if self.server.extension_emulated is None:
            rows = await self.own_query(_EXTENSION_PROBE)
            if rows is None:
                return False  # cannot ask now (mid-batch or failed transaction): assume native
            self.server.extension_emulated = rows[0][0] == "0"
            log.info(
                "google_ml_integration: %s mode",
                "emulated" if self.server.extension_emulated else "native",
            )
        return self.server.extension_emulated

    async def own_query(self, sql: str) -> list[tuple[str | None, ...]] | None:
        """Rows of a statement of the proxy's own (see `_run_own`); raises ServerError."""
        collector = await self._run_own(sql)
        if collector is None:
            return None
        if collector.error is not None:
            raise collector.error
        return collector.rows

    async def own_reply(
        self, sql: str, capture_notices: bool, copy: bytes | None = None, *, mid_batch: bool = False
    ) -> Reply:
        """The reply to a statement of the proxy's own, for the prediction pre-warm.

        `copy`: CopyData..CopyDone to send when the statement is a COPY FROM STDIN.
        """
        collector = await self._run_own(sql, capture_notices=capture_notices, copy=copy, mid_batch=mid_batch)
        if collector is None:
            raise PredictionError("pg-model-proxy cannot run its statements at this point", "55000")
        error = collector.error.fields if collector.error is not None else None
        return Reply(collector.rows, collector.notices, error)

    async def _run_own(
        self, sql: str, *, capture_notices: bool = False, copy: bytes | None = None, mid_batch: bool = False
    ) -> ReplyCollector | None:
        """Run a statement of the proxy's own in this session, once the server is idle.

        None when it cannot run now: in the middle of the client's extended-protocol batch,
        or in a failed transaction. If the caller is cancelled meanwhile, the reply is still
        consumed (and dropped), so the stream stays in step.
        """
        if (self.cycle.unsynced and not mid_batch) or self.cycle.copy_in:
            return None
        while self.cycle.pending:  # wait for the answers the server still owes
            self._idle_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._idle_waiter
            finally:
                self._idle_waiter = None
        if self.cycle.status == b"E" or self.state is not State.RELAY:
            return None
        # A collect run (capturing notices) may read many rows that nobody needs.
        collector = ReplyCollector(capture_notices=capture_notices, keep_rows=not capture_notices)
        self._own, self._own_done = collector, asyncio.get_running_loop().create_future()
        self._own_copy = copy
        assert self.upstream is not None
        self.upstream.write(m.message(m.QUERY, sql.encode() + b"\0"))
        done = self._own_done
        await asyncio.shield(done)
        return collector

    def _own_reply(self, data: bytes) -> bytes:
        """Feed the proxy's own statement's reply; return bytes that follow it."""
        assert self._own is not None
        for_client, rest = self._own.feed(data)
        if for_client and self.client is not None:
            self.client.write(for_client)
        if self._own.copy_requested:
            self._own.copy_requested = False
            assert self.upstream is not None
            payload, self._own_copy = self._own_copy, None
            # No data to give (should not happen): end the COPY with CopyFail.
            self.upstream.write(payload or m.message(m.COPY_FAIL, b"pg-model-proxy: no data\0"))
        if self._own.done:
            self._own = None
            if self._own_done is not None and not self._own_done.done():
                self._own_done.set_result(None)
            self._own_done = None
        return rest

    def _restore_tags(self, data: bytes, events: list[tuple[int, bytes | None]]) -> bytes:
        """Give rewritten statements' CommandComplete the tag the client's statement has.

        Each statement of a rewritten message ends with one CommandComplete or
        EmptyQueryResponse (or an error, after which the rest is skipped until
        ReadyForQuery), so the tags are consumed in order.
        """
        out = bytearray()
        cursor = 0
        for (type_code, _body), (start, end) in zip(events, self.server_scanner.offsets, strict=True):
            if type_code in _STATEMENT_DONE and self._tag_rewrites:
                new = self._tag_rewrites.popleft()
                if new is not None and type_code == _COMMAND_COMPLETE and 0 <= start and end <= len(data):
                    out += data[cursor:start] + m.message(m.COMMAND_COMPLETE, new + b"\0")
                    cursor = end
            elif type_code == _READY_FOR_QUERY and self.cycle.pending <= 1:
                self._tag_rewrites.clear()  # the cycle is over: forget what was not seen
                self.server_scanner.keep_also(_SERVER_KEEP, track_offsets=False)
        if cursor == 0:
            return data
        out += data[cursor:]
        return bytes(out)

    def _client_events(self, events: list[tuple[int, bytes | None]]) -> None:
        for type_code, body in events:
            self.cycle.client_message(type_code)
            if body is not None and type_code in _SQL_TYPES:
                self._note_ddl(body)
                if type_code == QUERY:
                    self._query_sent(body)
            if type_code == PARSE and self._bind_calls and body is not None:
                self._bind_calls.pop(parse_statement_name(body), None)  # redefined
            if type_code == _TERMINATE:
                self._client_terminated = True

    def _query_sent(self, body: bytes) -> None:
        """A Query went to the server: remember it while it can still be run again."""
        self._retry_candidate = body if self.cycle.pending == 1 and self.cycle.status == b"I" else None

    def _hold_for_retry(self, data: bytes, events: list[tuple[int, bytes | None]]) -> bytes:
        """The candidate Query failed on a call nobody pre-warmed: hold its reply until
        ReadyForQuery, then send the Query again as a collect run if nothing was committed
        and nothing else waits. Returns the bytes the client must get now (b"": none)."""
        codes = [t for t, _ in events]
        if self._held_reply is None:  # the miss is in this chunk
            self._unforeseen_miss = False
            failed_first = _COMMAND_COMPLETE not in codes[: codes.index(_ERROR_RESPONSE)]
            if self._retry_candidate is None or not failed_first:
                return data
            self._held_reply = bytearray()
        self._held_reply += data
        if _READY_FOR_QUERY not in codes:
            return b""
        reply, self._held_reply = bytes(self._held_reply), None
        body, self._retry_candidate = self._retry_candidate, None
        # (An inspection task that has just sent this Query may be done but not yet reaped.)
        busy = self._queue or (self._inspecting is not None and not self._inspecting.done())
        if body is None or self.cycle.pending or self.cycle.status != b"I" or busy:
            return reply
        again = Held(QUERY, body, m.message(m.QUERY, body), retry=True)
        if len(sql_statements(again.sql())) != 1:
            return reply  # run again, a Query of several could repeat what its own COMMIT committed
        log.info("client %s: a model call nobody foresaw; running the statement again after a collect run", self.peer)
        self._queue.appendleft(again)
        self._drain()
        return b""

    def _note_ddl(self, body: bytes) -> None:
        """DDL on its way to the server may add or drop what hides model calls: look again."""
        if may_change_catalog(body):
            self._catalog_changed = True
            self.server.hiding.invalidate(self.database)

    def _server_events(self, events: list[tuple[int, bytes | None]]) -> None:
        for type_code, body in events:
            if type_code == _READY_FOR_QUERY:
                if self._authenticated:
                    self.cycle.server_message(type_code, body)
                    if self._catalog_changed and self.cycle.status == b"I":
                        self._catalog_changed = False  # committed (or not): visible to all now
                        self.server.hiding.invalidate(self.database)
                else:
                    self._authenticated = True
                    if body:
                        self.cycle.status = body[:1]
                    log.debug("client %s: ready (user %s)", self.peer, self._who())
            elif type_code == _BACKEND_KEY_DATA and body is not None and len(body) >= 8:
                (pid,) = struct.unpack_from("!I", body)
                self.cancel_key = (pid, bytes(body[4:]))
                self.server.register_cancel_key(self)
            elif type_code == _PARAMETER_STATUS and body is not None:
                name, _, value = body.partition(b"\0")
                if name == b"server_version":
                    digits = value.split(b".", 1)[0]
                    self.server_major = int(digits) if digits.isdigit() else 0
            elif type_code == _ERROR_RESPONSE:
                if body is not None:
                    fields = m.parse_error_fields(body)
                    if fields.get("V", "") in ("FATAL", "PANIC"):
                        self._server_sent_fatal = True
                    elif fields.get("C") == UNANSWERED_CALL:
                        # A call the proxy did not foresee (DDL it has not seen yet?): look again.
                        self.server.hiding.invalidate(self.database)
                        self._unforeseen_miss = True
            else:
                self.cycle.server_message(type_code, body)

    # --- startup -----------------------------------------------------------------------

    def _read_startup_packets(self) -> None:
        while self.state is State.STARTUP:
            try:
                packet, used = read_startup_packet(self._buffer)
            except ProtocolViolation as exc:
                self._fail(exc)
                return
            if packet is None:
                return
            del self._buffer[:used]
            if isinstance(packet, SSLRequest | GSSENCRequest):
                if self._buffer:
                    # Bytes after the request would be read as if encrypted (CVE-2021-23214).
                    self._fail(ProtocolViolation("received unencrypted data after SSL request"))
                    return
                self._answer_encryption_request(packet)
            elif isinstance(packet, CancelRequest):
                self.server.spawn(self._forward_cancel(packet))
                self._close(client_error=None)
            else:
                self._start(packet)

    def _answer_encryption_request(self, packet: SSLRequest | GSSENCRequest) -> None:
        assert self.client is not None
        tls = self.server.client_tls
        if isinstance(packet, SSLRequest) and tls is not None and not self._tls:
            self.state = State.TLS_HANDSHAKE
            self.client.pause_reading()
            self.client.write(b"S")
            self._spawn(self._upgrade_client_to_tls())
        else:
            self.client.write(b"N")

    async def _upgrade_client_to_tls(self) -> None:
        assert self.client is not None and self.server.client_tls is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                new = await loop.start_tls(self.client, self, self.server.client_tls, server_side=True)
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.info("client %s: TLS handshake failed: %s", self.peer, exc)
            self._close(client_error=None)
            return
        if new is None or self.state is State.CLOSED:
            self._close(client_error=None)
            return
        self.client = new
        self._tls = True
        self.state = State.STARTUP
        if self._buffer:
            self._read_startup_packets()

    def _start(self, startup: StartupMessage) -> None:
        self.startup = startup
        if not self.server.admit(self):
            self._close(
                client_error=m.error_response("FATAL", "53300", "sorry, too many clients already")
            )
            return
        self.state = State.CONNECTING
        assert self.client is not None
        self.client.pause_reading()
        self._spawn(self._connect_upstream(startup))

    async def _connect_upstream(self, startup: StartupMessage) -> None:
        target = self.server.upstream
        try:
            transport, proto = await upstream.connect(
                target, self.server.upstream_tls, timeout=self.settings.connect_timeout
            )
        except upstream.UpstreamError as exc:
            log.warning("client %s: %s", self.peer, exc)
            self._close(
                client_error=m.error_response(
                    "FATAL", "08001", "pg-model-proxy could not connect to the server", detail=str(exc)
                )
            )
            return
        if self.state is State.CLOSED:  # the client left while we were connecting
            transport.close()
            return
        self.upstream = transport
        self.upstream.set_write_buffer_limits(high=self.settings.buffer_size)
        self.state = State.RELAY
        proto.attach(self)
        transport.write(startup.raw)
        log.debug("client %s: connected to server for user %s", self.peer, self._who())
        if self._buffer:
            early, self._buffer = bytes(self._buffer), bytearray()
            self._relay_client_data(early)
        if self.client is not None and self.state is State.RELAY:
            self.client.resume_reading()

    async def _forward_cancel(self, request: CancelRequest) -> None:
        # The server's own key is passed to clients unchanged, so the request is
        # forwarded as is; the server checks it (this also works across replicas).
        target = self.server.sessions_by_key.get((request.process_id, request.secret_key))
        if target is not None:
            log.info("cancel request for client %s", target.peer)
            if target.cancel_model_calls():
                return  # the statement has not reached the server yet
        await self.server.forward_cancel(request.raw)

    # --- endings -----------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Close as soon as no statement is running (the proxy is shutting down)."""
        self._close_when_answered(
            m.error_response(
                "FATAL", "57P01", "terminating connection due to administrator command",
                detail="pg-model-proxy is shutting down.",
            ),
            until_idle=True,
        )

    def _close_when_answered(self, error: bytes, *, until_idle: bool) -> None:
        """Stop reading the client; close with `error` once the server has answered.

        until_idle: wait for the client's open extended-protocol batch too (shutdown);
        otherwise only for the ReadyForQuery messages already owed (protocol violation).
        """
        self._deferred_error, self._deferred_until_idle = error, until_idle
        if self._read_ahead is not None and not self._read_ahead.done():
            self._read_ahead.set_result(None)  # no more is read: go on with what is queued
        if self.client is not None and self.state is State.RELAY:
            self.client.pause_reading()
        if self.state is not State.RELAY or self._deferred_done():
            self._close(client_error=error)

    def _deferred_done(self) -> bool:
        if self._queue or self._inspecting is not None:
            return False  # held client messages still have to reach the server
        return self.cycle.idle if self._deferred_until_idle else self.cycle.pending == 0

    def abort_for_shutdown(self) -> None:
        """Shutdown deadline passed: cancel what is running and close."""
        if self.state is State.CLOSED:
            return
        if not self.cycle.idle:
            self._spawn_cancel()
        self._close(
            client_error=m.error_response(
                "FATAL", "57P01", "terminating connection due to administrator command",
                detail="pg-model-proxy shut down before the statement finished; it was cancelled.",
            )
        )

    def _fail(self, exc: ProtocolViolation) -> None:
        """Like PostgreSQL: answer the valid messages before the violation, then FATAL."""
        log.info("client %s: protocol violation: %s", self.peer, exc)
        self._close_when_answered(
            m.error_response("FATAL", exc.sqlstate, str(exc)), until_idle=False
        )

    def _client_gone(self) -> None:
        if self.state is State.RELAY and not self.cycle.idle and not self._client_terminated:
            log.info("client %s disconnected mid-statement; cancelling it on the server", self.peer)
            self._spawn_cancel()
        self._close(client_error=None)

    def _spawn_cancel(self) -> None:
        if self.cancel_key is not None:
            pid, key = self.cancel_key
            self.server.spawn(self.server.forward_cancel(m.cancel_request(pid, key)))

    def _close(self, *, client_error: bytes | None) -> None:
        """Close both legs. The client gets `client_error` if the stream is at a boundary."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self.client is not None and not self.client.is_closing():
            if client_error is not None and self.server_scanner.at_boundary:
                self.client.write(client_error)
            self.client.close()
        if self.upstream is not None and not self.upstream.is_closing():
            if self.client_scanner.at_boundary and not self._client_terminated:
                self.upstream.write(m.terminate())
            self.upstream.resume_reading()
            self.upstream.close()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.server.session_closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _who(self) -> str:
        s = self.startup
        return f"{s.user}@{s.database}" if s else "?"
