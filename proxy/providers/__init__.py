"""One module a model provider: request shapes, response parsing, batch limits, auth headers.

Provider quirks stay in their module; the engine (`proxy/engine/`) does the rest once.
"""

from .base import Provider
from .registry import PROVIDERS, native_embedding, provider_for

__all__ = ["PROVIDERS", "Provider", "native_embedding", "provider_for"]
