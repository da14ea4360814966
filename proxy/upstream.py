"""The server leg: open a connection to PostgreSQL (TCP or Unix socket, optional TLS).

`connect` returns a transport whose protocol hands every byte to a sink (the session);
`send_cancel` delivers a CancelRequest on a connection of its own, as libpq does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Protocol

from .config import Upstream
from .wire.messages import ssl_request

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """The server could not be reached or refused the connection's TLS requirements."""


class ServerSink(Protocol):
    def server_data(self, data: bytes) -> None: ...
    def server_lost(self, exc: Exception | None) -> None: ...
    def server_paused(self) -> None: ...
    def server_resumed(self) -> None: ...


class ServerConnection(asyncio.Protocol):
    """asyncio protocol of the server leg; forwards events to the session that owns it."""

    def __init__(self) -> None:
        self.sink: ServerSink | None = None
        self.transport: asyncio.Transport | None = None
        self._pending: bytearray = bytearray()  # bytes read before a sink was attached
        self._answer: asyncio.Future[bytes] | None = None
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.server_data(data)
        elif self._answer is not None and not self._answer.done():
            self._answer.set_result(data)
        else:
            self._pending += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(UpstreamError("server closed the connection"))
        if self.sink is not None:
            self.sink.server_lost(exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.server_paused()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.server_resumed()

    def attach(self, sink: ServerSink) -> None:
        """Start delivering server bytes to `sink`, including any that arrived early."""
        self.sink = sink
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            sink.server_data(data)

    async def read_answer(self) -> bytes:
        self._answer = asyncio.get_running_loop().create_future()
        try:
            return await self._answer
        finally:
            self._answer = None

    async def wait_closed(self) -> None:
        await self._lost


async def connect(
    target: Upstream,
    tls: ssl.SSLContext | None,
    *,
    timeout: float,
    factory: Callable[[], ServerConnection] = ServerConnection,
) -> tuple[asyncio.Transport, ServerConnection]:
    """Connect to the server and negotiate TLS as `target.sslmode` asks."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if target.is_unix:
                transport, proto = await loop.create_unix_connection(factory, target.unix_path)
            else:
                transport, proto = await loop.create_connection(factory, target.host, target.port)
            if tls is not None:
                transport = await _negotiate_tls(loop, transport, proto, target, tls)
    except TimeoutError as exc:
        raise UpstreamError(f"timeout after {timeout:g}s connecting to {target.describe()}") from exc
    except OSError as exc:
        raise UpstreamError(f"could not connect to {target.describe()}: {exc.strerror or exc}") from exc
    return transport, proto


async def _negotiate_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    proto: ServerConnection,
    target: Upstream,
    tls: ssl.SSLContext,
) -> asyncio.Transport:
    transport.write(ssl_request())
    answer = await proto.read_answer()
    if answer[:1] == b"S" and len(answer) == 1:
        new = await loop.start_tls(transport, proto, tls, server_hostname=target.host)
        if new is None:  # pragma: no cover - only when the transport closed meanwhile
            raise UpstreamError("server closed the connection during the TLS handshake")
        proto.transport = new
        return new
    if answer[:1] == b"N" and len(answer) == 1 and target.sslmode == "prefer":
        return transport
    transport.close()
    if answer[:1] == b"N":
        raise UpstreamError(f"server {target.describe()} does not support SSL, but SSL was required")
    raise UpstreamError(f"unexpected answer to SSLRequest from {target.describe()}")


async def send_cancel(
    target: Upstream, tls: ssl.SSLContext | None, request: bytes, *, timeout: float
) -> None:
    """Deliver a CancelRequest packet to the server and wait until it hangs up."""
    try:
        transport, proto = await connect(target, tls, timeout=timeout)
    except UpstreamError as exc:
        log.warning("cancel request not delivered: %s", exc)
        return
    transport.write(request)
    try:
        async with asyncio.timeout(timeout):
            await proto.wait_closed()
    except TimeoutError:
        transport.close()
