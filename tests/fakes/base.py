"""The common machinery of the fake providers: a real HTTP server on 127.0.0.1.

Each fake is a stdlib ``ThreadingHTTPServer`` bound to a free port (port 0) and served
from a daemon thread, so tests talk to it over real sockets exactly as the proxy talks to
the real provider. What a fake answers is the provider's own wire format (see the
reference noted at the top of each provider module); what the test can change at any
time is here:

- ``latency``: seconds added before every answer (interrupted by ``stop()``);
- ``fail_next(n, status, retry_after, body)``: the next n requests get that status with the
  provider's real error JSON (or ``body``) and an optional ``Retry-After`` header;
- ``hang_next(n)``: the next n requests are read but never answered until ``stop()``;
- ``bad_body_next(n, kind)``: 200 with a body cut in half (``"malformed"``) or valid JSON of
  the wrong shape (``"shape"``: e.g. one embedding fewer than inputs);
- ``max_batch``: overrides the provider's real per-request input limit (``None``: the real
  one); over the limit the provider's real 400 (413 for Hugging Face/TEI) comes back;
- ``credential``: the key/token the auth header must carry (constructor argument), checked
  with the provider's real 401.

Scripted outcomes (fail/hang/bad body) are queued in call order and consumed one per
request, before authentication and routing. Every request is recorded (``requests``).
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

JSON = "application/json; charset=UTF-8"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str  # percent-decoded, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any  # the parsed body, or None when it was empty or not JSON


@dataclass
class Response:
    """What a provider handler answers: a JSON value (or raw bytes) and headers."""

    status: int
    body: Any = None  # JSON-serialisable value, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.body is None:
            return b""
        return orjson.dumps(self.body)  # millions of floats for a batch of embeddings


@dataclass(frozen=True)
class _Action:
    kind: str  # "fail" | "hang" | "bad_body"
    status: int = 200
    retry_after: float | int | str | None = None
    body: Any = None
    bad_kind: str = "malformed"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for hung or slow handlers
    request_queue_size = 128
    provider: FakeProvider


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real providers and httpx pools use
    disable_nagle_algorithm = True  # headers and body go out at once: no delayed-ACK stalls
    wbufsize = 64 * 1024
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.provider._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.provider._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        self.server.provider._dispatch(self, body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def send(self, response: Response) -> None:
        payload = response.payload()
        try:
            self.send_response(response.status)
            if payload or response.body is not None:
                self.send_header("Content-Type", response.content_type)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True


class FakeProvider:
    """Base of the fakes. Subclasses implement ``route`` and the error/auth hooks."""

    #: the provider's real per-request input limit (subclasses may refine it per model)
    real_max_batch: int | None = None

    def __init__(
        self, credential: str | None, *, latency: float = 0.0, max_batch: int | None = None
    ):
        self.credential = credential
        self.latency = latency
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._actions: deque[_Action] = deque()
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.provider = self
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Stop serving; hung and slow requests are released and their sockets closed."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ------------------------------------------------------------------ switches
    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        retry_after: float | int | str | None = None,
        body: Any = None,
    ) -> None:
        """The next ``n`` requests get ``status`` with the provider's error JSON (or ``body``)."""
        self._enqueue(n, _Action("fail", status=status, retry_after=retry_after, body=body))

    def hang_next(self, n: int = 1) -> None:
        """The next ``n`` requests are never answered (until ``stop()``)."""
        self._enqueue(n, _Action("hang"))

    def bad_body_next(self, n: int = 1, kind: str = "malformed") -> None:
        """The next ``n`` requests get 200 with malformed JSON or (``kind="shape"``) a wrong shape."""
        if kind not in ("malformed", "shape"):
            raise ValueError("kind is 'malformed' or 'shape'")
        self._enqueue(n, _Action("bad_body", bad_kind=kind))

    def reset(self) -> None:
        """Forget recorded requests and pending scripted outcomes."""
        with self._lock:
            self._requests.clear()
            self._actions.clear()

    def _enqueue(self, n: int, action: _Action) -> None:
        with self._lock:
            self._actions.extend([action] * n)

    # ------------------------------------------------------------------ inspection
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def last_request(self) -> RecordedRequest | None:
        with self._lock:
            return self._requests[-1] if self._requests else None

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests have arrived (True) or ``timeout`` passes."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._requests) >= n, timeout=timeout)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, handler: _Handler, body: bytes) -> None:
        split = urlsplit(handler.path)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = RecordedRequest(
            method=handler.command,
            path=unquote(split.path),
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
            json=parsed,
        )
        with self._arrived:
            self._requests.append(request)
            action = self._actions.popleft() if self._actions else None
            self._arrived.notify_all()

        if action is not None and action.kind == "hang":
            self._stopped.wait()
            handler.close_connection = True
            return
        if self.latency > 0 and self._stopped.wait(self.latency):
            handler.close_connection = True
            return

        if action is not None and action.kind == "fail":
            response = (
                self.error(action.status)
                if action.body is None
                else Response(
                    action.status,
                    action.body if not isinstance(action.body, str) else action.body.encode(),
                )
            )
            if action.retry_after is not None:
                response.headers["Retry-After"] = str(action.retry_after)
        else:
            try:
                response = self.check_auth(request) or self.route(request)
            except Exception as exc:  # a bug in the fake must not look like a hang
                response = self.error(500, f"fake provider crashed: {exc!r}")
            if action is not None and action.kind == "bad_body":
                response = self._bad_body(request, response, action.bad_kind)
        handler.send(response)

    def _bad_body(self, request: RecordedRequest, good: Response, kind: str) -> Response:
        if kind == "shape":
            body = good.body
            if isinstance(body, bytes):
                try:
                    body = json.loads(body)
                except ValueError:
                    body = None
            return Response(200, self.wrong_shape(request, body))
        payload = good.payload() or b'{"unexpected": true}'
        return Response(200, payload[: max(1, len(payload) // 2)])

    # ------------------------------------------------------------------ hooks
    def route(self, request: RecordedRequest) -> Response:
        raise NotImplementedError

    def check_auth(self, request: RecordedRequest) -> Response | None:
        """The provider's 401 when the credential is missing or wrong, else None."""
        return None

    def error(self, status: int, message: str | None = None) -> Response:
        """The provider's real error body for ``status``."""
        return Response(status, {"error": message or HTTPStatus(status).phrase})

    def wrong_shape(self, request: RecordedRequest, good: Any) -> Any:
        """Valid JSON that a client must reject (default: an unrelated object)."""
        return {"unexpected": True}

    def effective_batch_limit(self, real: int | None) -> int | None:
        """``max_batch`` when the test set it, else the provider's real limit."""
        return self.max_batch if self.max_batch is not None else real


# ---------------------------------------------------------------------- shared helpers
def bearer_token(request: RecordedRequest) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# google.rpc.Code names by HTTP status (https://cloud.google.com/apis/design/errors)
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

GOOGLE_MISSING_CREDENTIAL = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
GOOGLE_INVALID_CREDENTIAL = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


def google_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Google's JSON error model: {"error": {"code", "message", "status"}}."""
    return Response(
        status,
        {
            "error": {
                "code": status,
                "message": message,
                "status": GOOGLE_STATUS.get(status, "UNKNOWN"),
            }
        },
        headers=dict(headers or {}),
    )


def google_auth(request: RecordedRequest, expected: str | None) -> Response | None:
    """Google APIs: Bearer OAuth token required; 401 UNAUTHENTICATED otherwise."""
    if expected is None:
        return None
    token = bearer_token(request)
    if token is None:
        return google_error(
            401,
            GOOGLE_MISSING_CREDENTIAL,
            {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
        )
    if token != expected:
        return google_error(
            401,
            GOOGLE_INVALID_CREDENTIAL,
            {
                "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            },
        )
    return None


def chunked(items: Iterable[str], parts: int) -> list[str]:
    """Split a list of words into at most ``parts`` space-joined pieces (for streaming)."""
    words = list(items)
    if not words:
        return [""]
    size = max(1, -(-len(words) // parts))
    pieces = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [p + (" " if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)]


Responder = Callable[[str], str]


def echo(prompt: str) -> str:
    """The default chat reply: deterministic and tied to the prompt."""
    return f"Echo: {prompt}"
