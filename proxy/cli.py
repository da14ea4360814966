"""`pg-model-proxy` (also `python -m proxy`): start the proxy, and the embedded server if needed."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from .config import Settings
from .server import ProxyServer

log = logging.getLogger("proxy")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["install-extension"]:
        sys.exit(install_extension(args[1:]))
    settings = Settings.load(args)
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


def install_extension(argv: list[str]) -> int:
    """`pg-model-proxy install-extension --pg-config PATH`: native mode for a server you own."""
    import argparse
    import subprocess

    from .extension import install_files

    parser = argparse.ArgumentParser(
        prog="pg-model-proxy install-extension",
        description="Copy the google_ml_integration extension files into a PostgreSQL "
        "installation's extension directory (run as the owner of that directory).",
    )
    parser.add_argument(
        "--pg-config", required=True, help="the server's pg_config, e.g. /usr/lib/postgresql/16/bin/pg_config"
    )
    options = parser.parse_args(argv)
    try:
        for path in install_files(Path(options.pg_config)):
            print(path)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"pg-model-proxy install-extension: {exc}", file=sys.stderr)
        return 1
    print("now run: CREATE EXTENSION google_ml_integration;")
    return 0


def _is_loopback(address: tuple[str, int] | None) -> bool:
    return address is not None and (address[0].startswith("127.") or address[0] == "::1")
