"""The listener: accepts clients, keeps the registry of sessions, shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from . import tls, upstream
from .config import Settings, Upstream
from .engine.engine import Engine
from .engine.settings import EngineSettings
from .session import Session
from .sql.hiding import CatalogCache

log = logging.getLogger(__name__)


class ProxyServer:
    """Owns the listening socket and every live session."""

    def __init__(self, settings: Settings, target: Upstream) -> None:
        self.settings = settings
        self.upstream = target
        self.client_tls = tls.client_facing_context(settings)
        self.upstream_tls = tls.upstream_context(target)
        self.sessions: set[Session] = set()
        self.sessions_by_key: dict[tuple[int, bytes], Session] = {}
        self._admitted = 0
        self._listener: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.address: tuple[str, int] | None = None
        # Whether google_ml_integration is emulated on the upstream; learnt by the first session that needs it.
        self.extension_emulated: bool | None = None
        # Per database: the views, triggers, generated columns and functions that hide model calls.
        self.hiding = CatalogCache(settings.catalog_ttl)
        self._engine: Engine | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        host, port = self.settings.listen_host_port
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: Session(self), host, port, reuse_address=True, backlog=1024
        )
        sock = self._listener.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        log.info(
            "listening on %s:%d (TLS to clients: %s), fronting %s",
            sock[0],
            sock[1],
            "on" if self.client_tls else "off",
            self.upstream.describe(),
        )

    async def shutdown(self) -> None:
        """Stop accepting; let running statements finish (bounded); close every session."""
        if self._listener is not None:
            self._listener.close()
        sessions = list(self.sessions)
        if sessions:
            log.info("shutting down: waiting for %d session(s) to finish", len(sessions))
        for session in sessions:
            session.begin_shutdown()
        pending = [s.closed for s in sessions if not s.closed.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.settings.shutdown_timeout)
            if still:
                log.warning("shutdown timeout: cancelling %d running statement(s)", len(still))
                for session in sessions:
                    session.abort_for_shutdown()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.settings.connect_timeout)
        for close in self._closers:
            await close()
        if self._listener is not None:
            await self._listener.wait_closed()

    # --- registry, used by sessions ---

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)

    def admit(self, session: Session) -> bool:
        """Count a session that sent its StartupMessage; False when over max_clients."""
        if self._admitted >= self.settings.max_clients:
            return False
        self._admitted += 1
        session.admitted = True
        return True

    def register_cancel_key(self, session: Session) -> None:
        if session.cancel_key is not None:
            self.sessions_by_key[session.cancel_key] = session

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.admitted:
            self._admitted -= 1
            session.admitted = False
        if session.cancel_key is not None and self.sessions_by_key.get(session.cancel_key) is session:
            del self.sessions_by_key[session.cancel_key]

    async def forward_cancel(self, request: bytes) -> None:
        await upstream.send_cancel(
            self.upstream, self.upstream_tls, request, timeout=self.settings.connect_timeout
        )

    def model_engine(self) -> Engine:
        """The provider engine, with its credentials, created on first use (in the running loop)."""
        if self._engine is None:
            self._engine = build_engine(self.settings, self._closers)
        return self._engine

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background task the shutdown waits for (cancel requests)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def build_engine(settings: Settings, closers: list[Callable[[], Awaitable[None]]]) -> Engine:
    """The engine and credentials the settings describe; closers are run at shutdown."""
    from .secrets import default_resolver
    from .secrets.credentials import ModelCredentials
    from .secrets.google_auth import GoogleCredentials

    google = None
    try:
        google = GoogleCredentials.from_key_file(settings.google_key_file)
    except Exception as exc:  # no key file and no ADC: Google-authenticated models fail clearly later
        log.info("no Google credentials (%s): Vertex AI and Secret Manager unavailable", type(exc).__name__)
    resolver = default_resolver(google, secret_manager_base_url=settings.secret_manager_base_url)
    engine = Engine(
        EngineSettings(
            openai_base_url=settings.openai_base_url,
            anthropic_base_url=settings.anthropic_base_url,
            vertex_base_url=settings.vertex_base_url,
            huggingface_base_url=settings.huggingface_base_url,
            google_project=settings.google_project,
            google_region=settings.google_region,
            request_timeout=settings.model_timeout,
            max_concurrency_per_model=settings.max_concurrency_per_model,
        ),
        ModelCredentials(resolver, google),
    )
    closers.append(engine.aclose)
    closers.append(resolver.aclose)
    if google is not None:
        close = google.close

        async def close_google() -> None:
            result = close()
            if asyncio.iscoroutine(result):
                await result

        closers.append(close_google)
    return engine
