"""Fixtures: one real PostgreSQL and one proxy in front of it for the whole run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from proxy.embedded import EmbeddedPostgres
from tests.support import ProxyProcess, create_password_users, make_server


@dataclass
class Database:
    """A PostgreSQL server the tests use: directly (baseline) or through a proxy."""

    host: str
    port: int
    server: EmbeddedPostgres | None  # None for TEST_DATABASE_URL: cannot be reconfigured
    superuser: str = "postgres"
    password: str = ""

    @property
    def upstream(self) -> str:
        """What a proxy's --upstream gets: the Unix socket for the embedded server."""
        if self.server is not None:
            return f"postgresql:///?host={self.server.socket_dir}&port={self.port}"
        return f"postgresql://{self.host}:{self.port}/"

    @contextmanager
    def scratch(self, prefix: str) -> Iterator[str]:
        """A database of its own (named prefix_<random>), dropped afterwards."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.direct_dsn(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            with psycopg.connect(self.direct_dsn(), autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def tcp_upstream(self, sslmode: str = "disable") -> str:
        return f"postgresql://{self.host}:{self.port}/?sslmode={sslmode}"

    def direct_dsn(self, user: str | None = None, database: str = "postgres", password: str | None = None) -> str:
        user = user or self.superuser
        password = self.password if password is None and user == self.superuser else password
        auth = user + (f":{password}" if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}?sslmode=disable"

    def require_embedded(self) -> EmbeddedPostgres:
        if self.server is None:
            pytest.skip("needs a server the suite started itself (not TEST_DATABASE_URL)")
        return self.server


def _start_database(root: Path) -> Database:
    bin_dir = os.environ.get("PGMP_TEST_PG_BIN")
    server = make_server(root, bin_dir=Path(bin_dir) if bin_dir else None)
    server.start()
    create_password_users(server)
    return Database("127.0.0.1", server.port, server)


def _docker_database() -> Iterator[Database]:
    """PostgreSQL in a container via testcontainers (PGMP_TEST_SERVER=docker; needs an engine)."""
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("pgvector/pgvector:pg17", password="postgres") as container:
        yield Database(
            container.get_container_host_ip(),
            int(container.get_exposed_port(5432)),
            None,
            password="postgres",
        )


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """TEST_DATABASE_URL if set; a testcontainers server if PGMP_TEST_SERVER=docker; else embedded."""
    if os.environ.get("PGMP_TEST_SERVER") == "docker" and not os.environ.get("TEST_DATABASE_URL"):
        yield from _docker_database()
        return
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        parts = urlsplit(url)
        yield Database(
            parts.hostname or "127.0.0.1",
            parts.port or 5432,
            None,
            superuser=parts.username or "postgres",
            password=parts.password or "",
        )
        return
    db = _start_database(tmp_path_factory.mktemp("pg"))
    yield db
    assert db.server is not None
    db.server.stop()


@pytest.fixture
def fresh_database(tmp_path: Path) -> Iterator[Database]:
    """A server of its own, for tests that stop or break it."""
    db = _start_database(tmp_path / "pg")
    yield db
    assert db.server is not None
    db.server.stop()


@pytest.fixture(scope="session")
def has_pgvector(database: Database) -> bool:
    """Whether the server offers pgvector (the wheel's PostgreSQL 18 does; Debian's 15 may not)."""
    import psycopg

    with psycopg.connect(database.direct_dsn()) as conn:
        row = conn.execute("select count(*) from pg_available_extensions where name = 'vector'").fetchone()
        return bool(row and row[0])


@pytest.fixture(scope="session")
def server_version_num(database: Database) -> int:
    import psycopg

    with psycopg.connect(database.direct_dsn()) as conn:
        row = conn.execute("show server_version_num").fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def pgvector(has_pgvector: bool) -> None:
    if not has_pgvector:
        pytest.skip("pgvector is not installed on this server")


@pytest.fixture(scope="session")
def proxy(database: Database) -> Iterator[ProxyProcess]:
    """The proxy in front of the session's database (plain TCP to clients)."""
    p = ProxyProcess(["--upstream", database.upstream], superuser_password=database.password).start()
    yield p
    p.stop()


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., ProxyProcess]]:
    """Start extra proxies with their own arguments; all are stopped afterwards."""
    started: list[ProxyProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ProxyProcess:
        p = ProxyProcess(list(args), env=env or {}).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
