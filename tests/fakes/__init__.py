"""Local fake servers for the remote model providers (the only things the tests fake).

Each fake speaks its provider's real request/response and error format over real HTTP on
127.0.0.1 (see the reference noted at the top of each module), and offers switches for
latency, scripted failures, hangs, bad bodies and batch limits (see ``base``).
"""

from .anthropic import FakeAnthropic
from .base import FakeProvider, RecordedRequest, Response
from .embeddings import embed
from .huggingface import FakeHuggingFace
from .openai import FakeOpenAI
from .secret_manager import FakeSecretManager, crc32c
from .vertex import FakeVertex

__all__ = [
    "FakeAnthropic",
    "FakeHuggingFace",
    "FakeOpenAI",
    "FakeProvider",
    "FakeSecretManager",
    "FakeVertex",
    "RecordedRequest",
    "Response",
    "crc32c",
    "embed",
]
