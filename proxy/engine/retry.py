"""Retries: exponential backoff with jitter, Retry-After, bounded attempts, never past a deadline.

An attempt signals "worth another try" by raising `Retryable` around the error it would report
(429 and most 5xx, timeouts, connection errors); any other exception ends the call at once.
Time is injected (`clock`, `sleep`, `rng`) so tests never wait.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TypeVar

from .errors import ModelCallError, ModelTimeout

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Random = Callable[[], float]


class Retryable(Exception):
    """Raised by an attempt: `error` is what to report if no attempt is left."""

    def __init__(self, error: ModelCallError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def is_retryable_status(status: int) -> bool:
    """429, 408 and server errors other than 501 Not Implemented / 505 HTTP Version Not Supported."""
    return status in (408, 429) or (500 <= status <= 599 and status not in (501, 505))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP-date (`now`: Unix time)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: Random) -> float | None:
        """Seconds to wait after failed attempt `attempt` (1-based); None: do not retry.

        Without Retry-After: "equal jitter", between half and all of
        min(backoff_max, backoff_base * 2**(attempt-1)). With it: what the provider asked for
        plus up to 10% (so clients told the same time do not return together), or None when it
        asks for more than `max_retry_after`.
        """
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            return retry_after * (1 + 0.1 * rng())
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + ceiling / 2 * rng()


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    deadline: float | None,
    clock: Clock,
    sleep: Sleep,
    rng: Random,
    deadline_error: Callable[[ModelCallError | None], ModelTimeout],
    on_retry: Callable[[int, ModelCallError, float], None] | None = None,
) -> T:
    """Run `attempt` until it returns, raises a non-retryable error, or attempts or time run out.

    `deadline` is in `clock`'s time. An attempt is never started at or after it, and no backoff
    is slept that would end at or after it: the call fails at once with `deadline_error(last)`.
    """
    number = 0
    last: ModelCallError | None = None
    while True:
        if deadline is not None and clock() >= deadline:
            raise deadline_error(last)
        number += 1
        try:
            return await attempt()
        except Retryable as retry:
            last = retry.error
            if number >= policy.max_attempts:
                if number > 1:
                    last.message += f" (gave up after {number} attempts)"
                    last.args = (last.message,)
                raise last from None
            delay = policy.delay(number, retry.retry_after, rng)
            if delay is None:
                # Only a Retry-After past the limit refuses a delay: say why we did not wait.
                last.message += (
                    f" (asked to retry after {retry.retry_after:g} s; pg-model-proxy waits at "
                    f"most {policy.max_retry_after:g} s)"
                )
                last.args = (last.message,)
                raise last from None
            if deadline is not None and clock() + delay >= deadline:
                raise deadline_error(last) from None
            if on_retry is not None:
                on_retry(number, last, delay)
        await sleep(delay)
