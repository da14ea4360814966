"""Deterministic stand-in embeddings shared by every fake provider.

``embed(text, dim)`` is a pure function: the same text gives the same vector, different
texts give different (practically orthogonal) vectors, and the result has L2 norm 1. The
values are the text's SHAKE-256 digest read as signed 32-bit integers, scaled to [-1, 1)
(fast enough for benchmarks of 10,000 texts; a longer digest starts with the shorter one). A shorter
vector is the normalised prefix of a longer one (``embed(t, 8)`` is ``embed(t, 768)[:8]``
rescaled), which lets the fakes model Matryoshka-style truncation the way each provider
documents it.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from array import array
from functools import lru_cache

_TOKEN = re.compile(r"\w+|[^\w\s]")


@lru_cache(maxsize=65536)
def _raw(text: str, dim: int) -> tuple[float, ...]:
    words = array("i", hashlib.shake_256(text.encode("utf-8")).digest(4 * dim))
    if sys.byteorder == "little":
        words.byteswap()  # the same values on any machine
    scale = 1.0 / 2**31
    return tuple(w * scale for w in words)


def embed(text: str, dim: int) -> list[float]:
    """A deterministic, L2-normalised ``dim``-dimensional vector for ``text``."""
    if dim <= 0:
        raise ValueError("dim must be positive")
    return list(_normalised(text, dim))


@lru_cache(maxsize=65536)
def _normalised(text: str, dim: int) -> tuple[float, ...]:
    """Cached, so a benchmark can compute its vectors before timing (a real provider's
    compute is not on the machine that measures)."""
    raw = _raw(text, dim)
    norm = math.sqrt(math.fsum(v * v for v in raw)) or 1.0
    return tuple(v / norm for v in raw)


def truncated(text: str, full_dim: int, dim: int) -> list[float]:
    """The first ``dim`` values of the normalised ``full_dim`` vector, NOT renormalised.

    This is what Vertex AI returns for ``outputDimensionality`` below the model's native
    size (Google: only the full-size gemini-embedding-001 vector is normalised).
    """
    return embed(text, full_dim)[:dim]


def count_tokens(text: str) -> int:
    """A rough token count (words and punctuation marks); at least 1 for non-empty text."""
    return len(_TOKEN.findall(text)) or (1 if text else 0)


def cosine(a: list[float], b: list[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(math.fsum(x * x for x in a))
    nb = math.sqrt(math.fsum(y * y for y in b))
    return dot / (na * nb)
