"""Custom endpoints (google_ml.model_provider 'custom', the default): the request body is
passed through to the registered URL, Bearer auth when a secret is configured.

Embeddings of a custom model go through its transform functions, which run in the database:
the session builds each request body there and calls `Engine.predict` with it.
"""

from __future__ import annotations

from .base import Provider


class Custom(Provider):
    name = "custom"
    label = "the model endpoint"
