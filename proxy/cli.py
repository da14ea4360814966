"""`pg-model-proxy` (also `python -m proxy`): start the proxy, and the embedded server if needed."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from .config import Settings
from .server import ProxyServer

log = logging.getLogger("proxy")


def main(argv: list[str] | None = None) -> None:
    settings = Settings.load(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop

        runner: Callable[..., None] = uvloop.run
    except ImportError:  # pragma: no cover - e.g. Windows
        runner = asyncio.run
    try:
        runner(serve(settings))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        pass


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    embedded = None
    target = settings.upstream_target()
    if target is None:
        from .embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir, settings.pg_bin)
        target = await asyncio.to_thread(embedded.start)
    server = ProxyServer(settings, target)
    try:
        await server.start()
        if embedded is not None and not _is_loopback(server.address):
            log.warning(
                "the embedded server trusts every local connection: listening on %s lets anyone "
                "who reaches it log in as any user; set passwords and use --upstream for more",
                settings.listen,
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: shutting down")
        await server.shutdown()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    log.info("bye")


def _is_loopback(address: tuple[str, int] | None) -> bool:
    return address is not None and (address[0].startswith("127.") or address[0] == "::1")
