"""Fake Anthropic Messages API: ``POST /v1/messages``.

Checked against (search tool, corpora docs/issues):
- Anthropic "HTTP errors" (docs.anthropic.com/claude/reference/errors-and-rate-limits): 400
  invalid_request_error, 401 authentication_error, 403 permission_error, 404 not_found_error,
  429 rate_limit_error, 500 api_error, 529 overloaded_error; body ``{"type": "error", "error":
  {"type", "message"}}``, plus ``request_id`` (official TypeScript SDK ``ErrorResponse``).
- Header errors seen from the real API: 400 "anthropic-version: header is required"
  (PipedreamHQ/pipedream#9697, envoyproxy/ai-gateway#1909), 400 'anthropic-version: "X" is not
  a valid version' (decolua/9router#2357), 401 "x-api-key header is required" (n8n-io/n8n#37930),
  401 "invalid x-api-key" (eyaltoledano/claude-task-master#222).
- Message object (Cloudflare's schema of the Claude output, docs.rs anthropic-api
  MessagesResponse): ``{id, type: "message", role: "assistant", model, content: [{type:
  "text", text}], stop_reason, stop_sequence, usage: {input_tokens, output_tokens}}``.

Not faked: streaming (``"stream": true`` gets a 400 here) and tool use.
"""

from __future__ import annotations

import uuid
from typing import Any

from .base import FakeProvider, RecordedRequest, Responder, Response, echo
from .embeddings import count_tokens

VERSIONS = {"2023-06-01", "2023-01-01"}

_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def anthropic_error(status: int, message: str | None = None, type_: str | None = None) -> Response:
    default_type, default_message = _ERRORS.get(status, ("api_error", "Internal server error"))
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    return Response(
        status,
        {
            "type": "error",
            "error": {"type": type_ or default_type, "message": message or default_message},
            "request_id": request_id,
        },
        headers={"request-id": request_id},
    )


class FakeAnthropic(FakeProvider):
    """Serves ``{base_url}/v1/messages``; needs ``x-api-key`` and ``anthropic-version``."""

    def __init__(
        self, api_key: str | None = "sk-ant-test", *, responder: Responder = echo, **kwargs: Any
    ):
        self.responder = responder
        super().__init__(api_key, **kwargs)

    def check_auth(self, request: RecordedRequest) -> Response | None:
        if self.credential is None:
            return None
        key = request.headers.get("x-api-key")
        if not key:
            return anthropic_error(401, "x-api-key header is required")
        if key != self.credential:
            return anthropic_error(401, "invalid x-api-key")
        return None

    def error(self, status: int, message: str | None = None) -> Response:
        return anthropic_error(status, message)

    def wrong_shape(self, request: RecordedRequest, good: Any) -> Any:
        if isinstance(good, dict) and "content" in good:
            return {**good, "content": [{"type": "text"}]}  # a text block without text
        return {"type": "message"}

    def route(self, request: RecordedRequest) -> Response:
        if request.method != "POST" or request.path != "/v1/messages":
            return anthropic_error(404, f"Not Found: {request.method} {request.path}")
        version = request.headers.get("anthropic-version")
        if not version:
            return anthropic_error(400, "anthropic-version: header is required")
        if version not in VERSIONS:
            return anthropic_error(400, f'anthropic-version: "{version}" is not a valid version')
        body = request.json
        if not isinstance(body, dict):
            return anthropic_error(400, "There was an error parsing the body of your request.")
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return anthropic_error(400, f"{name}: Field required")
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            return anthropic_error(400, "max_tokens: Input should be greater than or equal to 1")
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return anthropic_error(400, "messages: at least one message is required")
        if body.get("stream"):
            return anthropic_error(400, "stream: the fake does not implement streaming")

        input_tokens = 0
        last_user = ""
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                return anthropic_error(
                    400, "messages: each message needs a role of 'user' or 'assistant'"
                )
            content = message.get("content")
            text = (
                content
                if isinstance(content, str)
                else " ".join(
                    block.get("text", "") for block in content or [] if isinstance(block, dict)
                )
            )
            input_tokens += count_tokens(text)
            if message["role"] == "user":
                last_user = text
        system = body.get("system")
        if isinstance(system, str):
            input_tokens += count_tokens(system)

        reply = self.responder(last_user)
        words = reply.split(" ")
        stop_reason = "end_turn"
        if len(words) > body["max_tokens"]:
            reply, stop_reason = " ".join(words[: body["max_tokens"]]), "max_tokens"
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        return Response(
            200,
            {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": reply}],
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": count_tokens(reply)},
            },
            headers={"request-id": request_id},
        )
