"""Bounded concurrency: at most N HTTP requests in flight per model, across all sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ConcurrencyLimits:
    """One asyncio.Semaphore per model id, created on first use.

    The engine holds a slot only while a request is on the wire, never during a backoff sleep,
    so a model being retried does not block other calls to it.
    """

    def __init__(self, per_model: int) -> None:
        if per_model < 1:
            raise ValueError("per_model must be at least 1")
        self.per_model = per_model
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._busy: dict[str, int] = {}

    @asynccontextmanager
    async def slot(self, model_id: str) -> AsyncIterator[None]:
        """Wait for a free slot of the model, hold it for the body of `async with`."""
        semaphore = self._semaphores.get(model_id)
        if semaphore is None:
            semaphore = self._semaphores[model_id] = asyncio.Semaphore(self.per_model)
        async with semaphore:
            self._busy[model_id] = self._busy.get(model_id, 0) + 1
            try:
                yield
            finally:
                self._busy[model_id] -= 1

    def in_flight(self, model_id: str) -> int:
        """Requests to a model on the wire now (for metrics and tests)."""
        return self._busy.get(model_id, 0)
