"""Anthropic (google_ml.model_provider 'anthropic'): the Messages API, generic models only.

The key goes in `x-api-key`, and every request carries `anthropic-version: 2023-06-01` (a
header function's own headers override it). Anthropic has no embedding models.
"""

from __future__ import annotations

from proxy.engine.models import ModelConfig
from proxy.engine.settings import EngineSettings

from .base import Provider, rebase

PUBLIC_ORIGIN = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


class Anthropic(Provider):
    name = "anthropic"
    label = "Anthropic"
    builtin_header_fns = frozenset({"google_ml.anthropic_claude_header_gen_fn"})

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"x-api-key": secret}

    def default_headers(self, model: ModelConfig) -> dict[str, str]:
        return {"anthropic-version": API_VERSION}

    def request_url(self, model: ModelConfig, settings: EngineSettings) -> str:
        return rebase(model.model_request_url.strip(), [PUBLIC_ORIGIN], settings.anthropic_base_url)
