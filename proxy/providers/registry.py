"""google_ml.model_provider values → provider objects."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from proxy.engine.errors import ModelConfigError
from proxy.engine.models import ModelConfig

from .anthropic import Anthropic
from .base import Provider
from .custom import Custom
from .hugging_face import HuggingFace
from .openai import OpenAI
from .vertex import VertexAI

PROVIDERS: Mapping[str, Provider] = MappingProxyType(
    {p.name: p for p in (VertexAI(), OpenAI(), HuggingFace(), Anthropic(), Custom())}
)


def provider_for(name: str, *, model_id: str | None = None) -> Provider:
    """The provider of a google_ml.model_provider value, or ModelConfigError."""
    provider = PROVIDERS.get(name)
    if provider is None:
        raise ModelConfigError(
            f'provider "{name}" is not supported by this proxy yet', model_id=model_id
        )
    return provider


def native_embedding(model: ModelConfig) -> bool:
    """Whether `Engine.embed` serves the model itself, batched.

    True for a provider with built-in embedding support when the model has no transform
    functions or only the provider's built-in ones, and no header function. Otherwise
    `proxy.transforms` runs the model's functions in the database: user transforms give one
    `Engine.predict` request a body; a header function alone keeps the native batches for
    texts with the same headers.
    """
    provider = PROVIDERS.get(model.model_provider)
    if provider is None or not provider.supports_embeddings:
        return False
    if model.header_gen_fn or model.input_batch_transform_fn or model.output_batch_transform_fn:
        return False
    transforms = {model.input_transform_fn, model.output_transform_fn} - {None}
    return transforms <= provider.builtin_transforms
