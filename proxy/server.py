"""The listener: accepts clients, keeps the registry of sessions, shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from . import tls, upstream
from .config import Settings, Upstream
from .session import Session

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

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background task the shutdown waits for (cancel requests)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
