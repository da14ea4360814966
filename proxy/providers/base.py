"""The provider interface: what the engine asks of each provider module.

A provider turns a batch of texts into one HTTP request and its answer back into vectors in
input order, says how many texts fit in a request, sends `predict_row` bodies unchanged and
returns the JSON it gets back, says how a secret is attached to a request, and reads its own
error bodies. Everything around that (deduplication, batching, retries, deadlines, concurrency,
credentials, secret scrubbing) is the engine's, once for all providers.

Providers are stateless singletons; the engine's settings are passed in where URLs are built.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import httpx
import orjson

from proxy.engine.errors import BadModelResponse, ModelConfigError
from proxy.engine.models import ModelConfig
from proxy.engine.retry import is_retryable_status, parse_retry_after
from proxy.engine.settings import EngineSettings

_NUMBER_TYPES = frozenset({float, int})

MAX_ERROR_MESSAGE = 1000  # characters of a provider's error message kept in ours
MAX_HTML_PAGE = 65536  # characters of an HTML error page searched for its text

Vector = list[float]


class Provider:
    """Base class: a provider that serves `predict_row` by passing bodies through, with Bearer auth."""

    name: ClassVar[str] = ""  # the google_ml.model_provider value
    label: ClassVar[str] = ""  # how error messages name it
    # Transform functions the provider's native embedding path stands in for
    builtin_transforms: ClassVar[frozenset[str]] = frozenset()
    # Header functions whose headers the provider adds itself (`default_headers`)
    builtin_header_fns: ClassVar[frozenset[str]] = frozenset()
    supports_embeddings: ClassVar[bool] = False

    # -- authentication --------------------------------------------------------------------

    def auth_headers(self, secret: str) -> dict[str, str]:
        """How a secret value (API key, token) is attached to a request."""
        return {"Authorization": f"Bearer {secret}"}

    def default_headers(self, model: ModelConfig) -> dict[str, str]:
        """Headers every request to the provider carries (overridable by the caller's)."""
        return {}

    # -- URLs ------------------------------------------------------------------------------

    def request_url(self, model: ModelConfig, settings: EngineSettings) -> str:
        """The URL to POST to: the registered one, with the configured base URL applied."""
        return model.model_request_url.strip()

    # -- embeddings ------------------------------------------------------------------------

    def batch_limit(self, model: ModelConfig) -> int:
        """Most texts one embedding request may carry."""
        return 1

    def batch_char_budget(self, model: ModelConfig) -> int | None:
        """Most characters one embedding request should carry (None: no limit).

        A stand-in for providers' per-request token limits.
        """
        return None

    def embedding_request(
        self,
        model: ModelConfig,
        texts: Sequence[str],
        settings: EngineSettings,
        headers: Mapping[str, str],
    ) -> httpx.Request:
        """The request that embeds `texts` (at most `batch_limit(model)` of them)."""
        raise ModelConfigError(
            f"{self.label} has no built-in embedding support; register input and output "
            "transform functions",
            model_id=model.model_id,
        )

    def parse_embeddings(
        self, model: ModelConfig, response: httpx.Response, count: int
    ) -> list[Vector]:
        """The `count` vectors of a 2xx response, in the order the texts were sent."""
        raise NotImplementedError

    # -- predict_row -----------------------------------------------------------------------

    def predict_request(
        self,
        model: ModelConfig,
        body: Any,
        settings: EngineSettings,
        headers: Mapping[str, str],
    ) -> httpx.Request:
        """The request sending `body` unchanged to the model's URL."""
        return self.post(model, self.request_url(model, settings), json_content(body), headers)

    def parse_prediction(self, model: ModelConfig, response: httpx.Response) -> Any:
        """The JSON of a 2xx response, as is."""
        return self.response_json(model, response)

    def prediction_text(self, model: ModelConfig, response: httpx.Response) -> str:
        """The JSON text of a 2xx response exactly as the provider sent it (predict_row returns
        the raw response: re-serialising would change numbers past 64 bits, spacing, order)."""
        self.response_json(model, response)  # it must be JSON; a bad answer is named here
        return response.text

    # -- errors and retries ----------------------------------------------------------------

    def error_message(self, response: httpx.Response) -> str:
        """The provider's own explanation of an HTTP error, from its JSON error body.

        Without one, the body's text: of an HTML page (a gateway's or load balancer's 502,
        a login page), its title or else its text without markup.
        """
        try:
            data = response.json()
        except ValueError:
            data = None
        message = find_error_message(data)
        if not message:
            text = response.text
            if _looks_like_html(response, text):
                text = html_text(text[:MAX_HTML_PAGE])
            message = " ".join(text.split()) or response.reason_phrase or "(empty response)"
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[: MAX_ERROR_MESSAGE - 3] + "..."
        return message

    def retryable(self, response: httpx.Response) -> bool:
        """Whether an HTTP error response is worth another attempt."""
        return is_retryable_status(response.status_code)

    def retry_after(self, response: httpx.Response, now: float) -> float | None:
        """Seconds the provider asks us to wait before retrying (`now`: Unix time)."""
        return parse_retry_after(response.headers.get("retry-after"), now)

    # -- helpers for subclasses --------------------------------------------------------------

    def post(
        self, model: ModelConfig, url: str, content: bytes, headers: Mapping[str, str]
    ) -> httpx.Request:
        """A JSON POST with the provider's default headers, then `headers` over them."""
        merged = httpx.Headers({"Content-Type": "application/json", "Accept": "application/json"})
        merged.update(self.default_headers(model))
        merged.update(headers)
        try:
            return httpx.Request("POST", url, content=content, headers=merged)
        except httpx.InvalidURL as exc:
            raise ModelConfigError(
                f"invalid request URL {url!r}: {exc}", model_id=model.model_id
            ) from None

    def bad(self, model: ModelConfig, what: str) -> BadModelResponse:
        return BadModelResponse(
            f"unexpected response from {self.label}: {what}", model_id=model.model_id
        )

    def response_json(self, model: ModelConfig, response: httpx.Response) -> Any:
        try:
            # orjson: a batch of 2048 embeddings is millions of floats; stdlib json is ~10x slower.
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass
        try:  # stdlib json also reads NaN/Infinity, so such vectors are named precisely later
            return json.loads(response.content)
        except ValueError:
            text = response.text
            if _looks_like_html(response, text):  # a captive portal, a proxy's login page
                title = html_text(text[:MAX_HTML_PAGE])[:200]
                raise self.bad(model, f"an HTML page, not JSON: {title!r}") from None
            snippet = " ".join(text[:200].split())
            raise self.bad(model, f"not JSON: {snippet!r}") from None

    def vector(self, model: ModelConfig, value: Any, where: str) -> Vector:
        """`value` as a non-empty list of finite floats, or BadModelResponse naming `where`."""
        if not isinstance(value, list) or not value:
            raise self.bad(model, f"{where} is not a non-empty list of numbers")
        # Fast path at C speed: the element types as a set (bool is its own type, so it
        # fails), and one sum to find inf/nan.
        if set(map(type, value)) <= _NUMBER_TYPES and math.isfinite(math.fsum(value)):
            return value
        out: Vector = []
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise self.bad(model, f"{where}[{i}] is not a number: {json.dumps(x)[:40]}")
            number = float(x)
            if not math.isfinite(number):
                raise self.bad(model, f"{where}[{i}] is not a finite number: {x!r}")
            out.append(number)
        return out

    def model_name(self, model: ModelConfig) -> str:
        """The model's name: the qualified name, else the last segment of its URL."""
        if model.model_qualified_name:
            return model.model_qualified_name
        return model.model_request_url.rstrip("/").rsplit("/", 1)[-1].split(":", 1)[0]


_HTML_START = re.compile(r"\s*<(?:!doctype\s+html|html|head|body)\b", re.I)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.I | re.S)
_HTML_INVISIBLE = re.compile(r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->", re.I | re.S)
_HTML_TAG = re.compile(r"<[^>]*>")


def _looks_like_html(response: httpx.Response, text: str) -> bool:
    content_type = response.headers.get("content-type", "").lower()
    return "html" in content_type or bool(_HTML_START.match(text))


def html_text(page: str) -> str:
    """What an HTML error page says: its title, else its visible text."""
    match = _HTML_TITLE.search(page)
    if match:
        title = " ".join(html.unescape(_HTML_TAG.sub(" ", match.group(1))).split())
        if title:
            return title
    return " ".join(html.unescape(_HTML_TAG.sub(" ", _HTML_INVISIBLE.sub(" ", page))).split())


def json_content(body: Any) -> bytes:
    """The bytes to send for a JSON body: str and bytes are JSON text already and go as they are."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def rebase(url: str, origins: Iterable[str], base: str | None) -> str:
    """`url` with a leading public origin (e.g. https://api.openai.com) replaced by `base`."""
    if base is None:
        return url
    lowered = url.lower()
    for origin in origins:
        origin = origin.lower().rstrip("/")
        if lowered.startswith(origin) and (len(url) == len(origin) or url[len(origin)] in "/?#"):
            return base.rstrip("/") + url[len(origin) :]
    return url


def find_error_message(data: Any) -> str | None:
    """The message in the common JSON error shapes.

    OpenAI `{"error": {"message"}}`, Anthropic `{"type": "error", "error": {"message"}}`,
    Google `{"error": {"code", "message", "status"}}` (in an array for streaming), Hugging Face
    `{"error": "..."}` or `{"error": ["..."]}`, FastAPI `{"detail": ...}`, bare `{"message"}`.
    """
    if isinstance(data, list) and data:
        return find_error_message(data[0])
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message.strip():
            return message.strip()
    if isinstance(error, str) and error.strip():
        return error.strip()
    if isinstance(error, list) and error and all(isinstance(e, str) for e in error):
        return "; ".join(error)
    for key in ("message", "detail", "error_description"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if key == "detail" and value:
            return json.dumps(value)
    return None
