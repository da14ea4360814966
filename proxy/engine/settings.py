"""EngineSettings: where the providers live and how hard the engine tries.

Every base URL is configurable so tests and private deployments can point a provider at another
server: a registered request URL on a provider's public origin (e.g. https://api.openai.com) is
sent to the configured base URL instead, path and query kept.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_VERTEX_BASE_URL = "https://{region}-aiplatform.googleapis.com"


class EngineSettings(BaseModel):
    """Settings of the provider engine (not yet wired into proxy/config.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    openai_base_url: str = Field(
        "https://api.openai.com", description="Replaces https://api.openai.com in OpenAI model URLs"
    )
    anthropic_base_url: str = Field(
        "https://api.anthropic.com",
        description="Replaces https://api.anthropic.com in Anthropic model URLs",
    )
    vertex_base_url: str = Field(
        DEFAULT_VERTEX_BASE_URL,
        description="Vertex AI base URL; {region} is replaced by the model's region",
    )
    google_project: str | None = Field(
        None, description="Google Cloud project for relative Vertex AI model URLs"
    )
    google_region: str = Field(
        "us-central1", description="Region for relative Vertex AI model URLs without one"
    )
    huggingface_base_url: str | None = Field(
        None,
        description="Replaces the Hugging Face inference origins in model URLs (None: send as registered)",
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to open a connection")
    request_timeout: float = Field(120.0, gt=0, description="Seconds one HTTP attempt may take")
    max_concurrency_per_model: int = Field(
        8, ge=1, description="HTTP requests in flight at once per model, across sessions"
    )
    max_connections: int = Field(100, ge=1, description="HTTP connections the engine keeps at most")
    max_attempts: int = Field(5, ge=1, description="HTTP attempts per request, the first included")
    backoff_base: float = Field(
        0.5, ge=0, description="Seconds before the first retry; doubles on each retry (with jitter)"
    )
    backoff_max: float = Field(30.0, ge=0, description="Longest wait between two attempts")
    max_retry_after: float = Field(
        60.0,
        ge=0,
        description="Give up rather than wait longer when a provider's Retry-After asks to",
    )

    @field_validator(
        "openai_base_url", "anthropic_base_url", "vertex_base_url", "huggingface_base_url"
    )
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")
