"""Engine: the one place model calls are made.

`embed` deduplicates a call's texts, splits them into the provider's batches, sends the batches
concurrently (at most `max_concurrency_per_model` requests in flight per model), retries what is
worth retrying, and returns one vector per text in input order. `predict` sends one JSON body
unchanged and returns the JSON answer. Both take a deadline in the engine's clock
(`Engine.clock()`, time.monotonic by default): no attempt starts and no backoff ends after it.

Cancelling the task awaiting a call cancels its HTTP requests (the connections are closed).
Errors are `ModelCallError`s with the call's secret values scrubbed from their messages.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from proxy.providers import Provider, provider_for

from .batching import dedupe, reassemble, split
from .credentials import CredentialSource, NoCredentials
from .errors import (
    BadModelResponse,
    ModelCallError,
    ModelConfigError,
    ModelTimeout,
    ModelUnavailable,
    ProviderError,
    scrub,
    secret_values,
)
from .limits import ConcurrencyLimits
from .models import ModelConfig
from .retry import Retryable, RetryPolicy, call_with_retries
from .settings import EngineSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "pg-model-proxy"
# Explicit headers (from a model's header function) whose values are treated as secrets
_SENSITIVE_HEADER = re.compile(r"auth|key|token|secret|password|cookie", re.I)


class Engine:
    """Makes model calls over one shared httpx.AsyncClient. Close it with `aclose()`."""

    def __init__(
        self,
        settings: EngineSettings | None = None,
        credentials: CredentialSource | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings or EngineSettings()
        self.credentials: CredentialSource = credentials or NoCredentials()
        s = self.settings
        self.limits = ConcurrencyLimits(s.max_concurrency_per_model)
        self.policy = RetryPolicy(s.max_attempts, s.backoff_base, s.backoff_max, s.max_retry_after)
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(s.request_timeout, connect=s.connect_timeout),
            limits=httpx.Limits(max_connections=s.max_connections),
            follow_redirects=False,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def clock(self) -> float:
        """Now, in the time deadlines are given in."""
        return self._clock()

    def deadline_in(self, seconds: float | None) -> float | None:
        """The deadline `seconds` from now (None stays None: no deadline)."""
        return None if seconds is None else self._clock() + seconds

    # -- calls -----------------------------------------------------------------------------

    async def embed(
        self,
        model: ModelConfig,
        texts: Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> list[list[float]]:
        """One vector per text, in input order; each distinct text is sent once.

        `headers` (e.g. from the model's header function) go on every request, over the
        credentials' headers of the same name, as in `predict`.
        """
        secrets: set[str] = set()
        try:
            provider = provider_for(model.model_provider, model_id=model.model_id)
            if not provider.supports_embeddings:
                raise ModelConfigError(
                    f"{provider.label} has no built-in embedding support; register input and "
                    "output transform functions",
                    model_id=model.model_id,
                )
            if not texts:
                return []
            unique, positions = dedupe(texts)
            auth: Mapping[str, str] = await self._auth_headers(model, provider, deadline, secrets)
            if headers:
                auth = self._with_explicit_headers(auth, headers, secrets)
            batches = split(unique, provider.batch_limit(model), provider.batch_char_budget(model))

            async def one_batch(batch: list[str]) -> list[list[float]]:
                request = provider.embedding_request(model, batch, self.settings, auth)
                response = await self._send(model, provider, request, deadline, secrets)
                return provider.parse_embeddings(model, response, len(batch))

            results = await _all([one_batch(batch) for batch in batches])
            vectors = [vector for result in results for vector in result]
            _check_dimensions(model, provider, vectors)
            return reassemble(vectors, positions)
        except ModelCallError as exc:
            exc.redact(secrets)
            raise

    async def predict(
        self,
        model: ModelConfig,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
        raw: bool = False,
    ) -> Any:
        """Send `body` unchanged to the model's URL and return the JSON answer as parsed
        (`raw`: as the JSON text the provider sent).

        `body` is JSON text (str or bytes, sent byte for byte) or a JSON-encodable value.
        `headers` (e.g. from the model's header function) override the provider's defaults and
        the credentials' headers of the same name.
        """
        secrets: set[str] = set()
        try:
            provider = provider_for(model.model_provider, model_id=model.model_id)
            merged: Mapping[str, str] = await self._auth_headers(model, provider, deadline, secrets)
            if headers:
                merged = self._with_explicit_headers(merged, headers, secrets)
            request = provider.predict_request(model, body, self.settings, merged)
            response = await self._send(model, provider, request, deadline, secrets)
            if raw:
                return provider.prediction_text(model, response)
            return provider.parse_prediction(model, response)
        except ModelCallError as exc:
            exc.redact(secrets)
            raise

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _with_explicit_headers(
        auth: Mapping[str, str], headers: Mapping[str, str], secrets: set[str]
    ) -> httpx.Headers:
        """The credentials' headers with `headers` over them; sensitive values become secrets."""
        secrets |= secret_values({k: v for k, v in headers.items() if _SENSITIVE_HEADER.search(k)})
        merged = httpx.Headers(auth)
        merged.update(headers)
        return merged

    async def _auth_headers(
        self, model: ModelConfig, provider: Provider, deadline: float | None, secrets: set[str]
    ) -> dict[str, str]:
        """The credentials' headers for the call; their values become the call's secrets."""
        try:
            async with asyncio.timeout(self._remaining(deadline)):
                headers = await self.credentials.headers_for(model)
        except TimeoutError:
            raise self._deadline_error(model, provider, None) from None
        secrets |= secret_values(headers)
        return headers

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - self._clock())

    async def _send(
        self,
        model: ModelConfig,
        provider: Provider,
        request: httpx.Request,
        deadline: float | None,
        secrets: set[str],
    ) -> httpx.Response:
        """Send with retries; the 2xx response (body read), or the error of the last attempt."""
        request.headers.setdefault("User-Agent", USER_AGENT)

        def on_retry(attempt: int, error: ModelCallError, delay: float) -> None:
            log.info(
                "retrying %s in %.2fs after attempt %d: %s",
                model.model_id,
                delay,
                attempt,
                scrub(str(error), secrets),
            )

        return await call_with_retries(
            lambda: self._attempt(model, provider, request, deadline),
            self.policy,
            deadline=deadline,
            clock=self._clock,
            sleep=self._sleep,
            rng=self._rng,
            deadline_error=lambda last: self._deadline_error(model, provider, last),
            on_retry=on_retry,
        )

    async def _attempt(
        self, model: ModelConfig, provider: Provider, request: httpx.Request, deadline: float | None
    ) -> httpx.Response:
        s = self.settings
        remaining = self._remaining(deadline)
        budget = s.request_timeout if remaining is None else min(s.request_timeout, remaining)
        request.extensions["timeout"] = httpx.Timeout(
            budget, connect=min(s.connect_timeout, budget)
        ).as_dict()
        try:
            async with asyncio.timeout(remaining) as call_timeout:
                async with self.limits.slot(model.model_id):
                    async with asyncio.timeout(s.request_timeout):
                        response = await self._client.send(request)
        except TimeoutError:
            if call_timeout.expired():
                raise self._deadline_error(model, provider, None) from None
            raise Retryable(self._attempt_timeout(model, provider)) from None
        except httpx.TimeoutException:
            if deadline is not None and self._clock() >= deadline:
                raise self._deadline_error(model, provider, None) from None
            raise Retryable(self._attempt_timeout(model, provider)) from None
        except httpx.UnsupportedProtocol as exc:
            raise ModelConfigError(
                f"cannot call {request.url}: {exc}", model_id=model.model_id
            ) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            unreachable = ModelUnavailable(
                f"cannot reach {provider.label} at {request.url.host}: {reason}",
                model_id=model.model_id,
            )
            raise Retryable(unreachable) from None
        except httpx.RequestError as exc:
            raise BadModelResponse(
                f"unreadable response from {provider.label}: {exc or type(exc).__name__}",
                model_id=model.model_id,
            ) from None
        if response.is_success:
            return response
        error = ProviderError(
            response.status_code,
            provider.error_message(response),
            provider=provider.label,
            model_id=model.model_id,
        )
        if provider.retryable(response):
            raise Retryable(error, provider.retry_after(response, self._wall_clock()))
        raise error

    def _attempt_timeout(self, model: ModelConfig, provider: Provider) -> ModelTimeout:
        return ModelTimeout(
            f"{provider.label} did not answer within {self.settings.request_timeout:g} s",
            model_id=model.model_id,
        )

    def _deadline_error(
        self, model: ModelConfig, provider: Provider, last: ModelCallError | None
    ) -> ModelTimeout:
        # The deadline is the statement's statement_timeout: say so in PostgreSQL's words.
        what = f"canceling statement due to statement timeout: no answer from {provider.label} in time"
        if last is not None:
            what += f" (last error: {last.what})"
        return ModelTimeout(what, model_id=model.model_id)


async def _all(calls: list[Awaitable[T]]) -> list[T]:
    """Run the calls concurrently; the first ModelCallError cancels the rest and is raised."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_await(call)) for call in calls]
    except BaseExceptionGroup as failures:
        raise _first_error(failures) from None
    return [task.result() for task in tasks]


async def _await(call: Awaitable[T]) -> T:
    return await call


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, ModelCallError):
            return leaf
    return group


def _check_dimensions(model: ModelConfig, provider: Provider, vectors: list[list[float]]) -> None:
    if not vectors:
        return
    expected = len(vectors[0])
    for vector in vectors:
        if len(vector) != expected:
            raise BadModelResponse(
                f"unexpected response from {provider.label}: embeddings of different dimensions "
                f"({expected} and {len(vector)} values)",
                model_id=model.model_id,
            )
