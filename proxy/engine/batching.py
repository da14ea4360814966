"""Deduplicate a call's inputs, split them into provider-sized batches, put the answers back.

A statement like `UPDATE t SET e = embedding('m', t.category)` repeats texts; each distinct text
is sent once per call and its vector reused for every position that asked for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def dedupe(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """Distinct texts in first-seen order, and for each input the index of its distinct text."""
    index: dict[str, int] = {}
    positions = [index.setdefault(text, len(index)) for text in texts]
    return list(index), positions


def split(texts: Sequence[str], size: int, max_chars: int | None = None) -> list[list[str]]:
    """Consecutive batches of at most `size` texts and (when given) `max_chars` characters.

    A text longer than `max_chars` on its own gets a batch of its own.
    """
    if size < 1:
        raise ValueError("batch size must be at least 1")
    batches: list[list[str]] = []
    current: list[str] = []
    chars = 0
    for text in texts:
        if current and (
            len(current) >= size or (max_chars is not None and chars + len(text) > max_chars)
        ):
            batches.append(current)
            current, chars = [], 0
        current.append(text)
        chars += len(text)
    if current:
        batches.append(current)
    return batches


def reassemble(results: Sequence[list[T]], positions: Sequence[int]) -> list[list[T]]:
    """One result per input position, in input order (each a copy: callers may mutate them)."""
    return [list(results[i]) for i in positions]
