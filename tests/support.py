"""Real parts for tests: a PostgreSQL server and the proxy running as a subprocess.

The server is the embedded one (PostgreSQL 18 + pgvector from the wheel, or the
binaries in PGMP_TEST_PG_BIN, e.g. /usr/lib/postgresql/15/bin), started in a
temporary directory with TCP on a free port, TLS on, and password-checked users for
the md5 and SCRAM tests. TEST_DATABASE_URL points the suite at an existing server
instead (tests that need to configure the server are then skipped).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from proxy.embedded import EmbeddedPostgres
from proxy.tls import self_signed_certificate

MD5_USER, MD5_PASSWORD = "md5_user", "md5 secret ü"
SCRAM_USER, SCRAM_PASSWORD = "scram_user", "scram-secret"

_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def system_pg_bin() -> Path | None:
    """The newest distribution PostgreSQL (e.g. /usr/lib/postgresql/15/bin), if installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def supports_ssl(bin_dir: Path | None) -> bool:
    """Whether these binaries were built with OpenSSL (the wheel's PostgreSQL 18 is not)."""
    server = EmbeddedPostgres(Path("/nonexistent"), bin_dir)
    assert server.bin_dir is not None
    out = subprocess.run([str(server.bin_dir / "pg_config"), "--configure"], capture_output=True, text=True)
    return "openssl" in out.stdout


def make_server(root: Path, *, bin_dir: Path | None = None, tls: bool | None = None) -> EmbeddedPostgres:
    """An embedded test server in `root` listening on the Unix socket and 127.0.0.1.

    TLS is on when the binaries support it (tls=None) or when asked.
    """
    if tls is None:
        tls = supports_ssl(bin_dir)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"password_encryption": "scram-sha-256", "max_connections": "300"}
    if tls:
        cert, key = self_signed_certificate(root)
        os.chmod(root, 0o755)
        settings.update(ssl="on", ssl_cert_file=str(cert), ssl_key_file=str(key))
    server = EmbeddedPostgres(
        root / "data",
        bin_dir,
        port=free_port(),
        listen_addresses="127.0.0.1",
        settings=settings,
        hba=[
            f"local all {MD5_USER} md5",
            f"local all {SCRAM_USER} scram-sha-256",
            f"host all {MD5_USER} 127.0.0.1/32 md5",
            f"host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256",
            "host all all 127.0.0.1/32 trust",
        ],
    )
    if tls:
        # The server runs as the service user under root: let it read its key.
        server._own(cert)
        server._own(key)
    return server


def service_account_key(directory: Path, *, project: str, token_uri: str) -> Path:
    """A fresh Google service-account key file whose token endpoint is `token_uri` (a fake)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0123456789abcdef",
        "private_key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "client_email": f"pgmp@{project}.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }
    path = directory / "key.json"
    path.write_text(json.dumps(info))
    return path


def create_password_users(server: EmbeddedPostgres) -> None:
    md5_hash = "md5" + __import__("hashlib").md5((MD5_PASSWORD + MD5_USER).encode()).hexdigest()
    server.psql(
        f"""
        DROP ROLE IF EXISTS {MD5_USER}; DROP ROLE IF EXISTS {SCRAM_USER};
        SET password_encryption = 'md5';
        CREATE ROLE {MD5_USER} LOGIN PASSWORD '{md5_hash}';
        SET password_encryption = 'scram-sha-256';
        CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';
        GRANT ALL ON SCHEMA public TO {MD5_USER}, {SCRAM_USER};
        """
    )


@dataclass
class ProxyProcess:
    """`python -m proxy` in a subprocess; its stderr is collected for assertions."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    superuser_password: str = ""
    logs: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self, timeout: float = 60) -> ProxyProcess:
        cmd = [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", *self.args]
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        threading.Thread(target=self._read_logs, daemon=True).start()
        if not self._ready.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError("proxy did not start:\n" + "".join(self.logs))
        return self

    def _read_logs(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.logs.append(line)
            match = _LISTENING.search(line)
            if match and not self.port:
                self.port = int(match.group(2))
                self._ready.set()
        self._ready.set()

    def dsn(self, user: str = "postgres", database: str = "postgres", password: str | None = None, **params: str) -> str:
        if password is None:  # the superuser's, for servers that want one (TEST_DATABASE_URL)
            password = self.superuser_password if user == "postgres" else ""
        auth = quote(user) + (":" + quote(password) if password else "")
        query = "&".join(f"{k}={v}" for k, v in {"sslmode": "disable", **params}.items())
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}?{query}"

    def log_text(self) -> str:
        return "".join(self.logs)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Poll a condition that other processes make true (a readiness probe, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
