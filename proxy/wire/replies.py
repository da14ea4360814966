"""Collecting the server's reply to a statement the proxy runs itself in a client's session.

The session sends a Query of its own only when the server is idle, so the reply starts at
a message boundary and ends with ReadyForQuery. Rows and errors are kept here; messages
the server may send at any time (NotificationResponse, ParameterStatus, NoticeResponse)
belong to the client and are handed back to be relayed.
"""

from __future__ import annotations

import struct

from .messages import parse_error_fields

_ASYNC = frozenset(b"ANS")  # NotificationResponse, NoticeResponse, ParameterStatus


class ServerError(Exception):
    """The server answered the proxy's own statement with an ErrorResponse."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", "error"))
        self.fields = fields


class ReplyCollector:
    """Feed server bytes; `done` once ReadyForQuery arrived. Rows are text (or None)."""

    def __init__(self, *, capture_notices: bool = False, keep_rows: bool = True) -> None:
        self.rows: list[tuple[str | None, ...]] = []
        self.keep_rows = keep_rows  # False: a collect run, whose rows nobody reads
        self.error: ServerError | None = None
        # Keep NoticeResponses (their fields) instead of handing them to the client.
        self.capture_notices = capture_notices
        self.notices: list[dict[str, str]] = []
        # Set when the server asks for COPY data (CopyInResponse): the caller sends it.
        self.copy_requested = False
        self.done = False
        self._buffer = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Consume bytes; return (messages for the client, bytes after ReadyForQuery)."""
        self._buffer += data
        for_client = bytearray()
        pos = 0
        buf = self._buffer
        while not self.done and len(buf) - pos >= 5:
            type_code = buf[pos]
            (length,) = struct.unpack_from("!I", buf, pos + 1)
            end = pos + 1 + length
            if end > len(buf):
                break
            body = bytes(buf[pos + 5 : end])
            if type_code == ord("D"):
                if self.keep_rows:
                    self.rows.append(_data_row(body))
            elif type_code == ord("E"):
                self.error = ServerError(parse_error_fields(body))
            elif type_code == ord("Z"):
                self.done = True
            elif type_code == ord("G"):
                self.copy_requested = True
            elif type_code == ord("N") and self.capture_notices:
                self.notices.append(parse_error_fields(body))
            elif type_code in _ASYNC:
                for_client += buf[pos:end]
            pos = end
        rest = bytes(buf[pos:]) if self.done else b""
        del buf[:pos]
        if self.done:
            buf.clear()
        return bytes(for_client), rest


def _data_row(body: bytes) -> tuple[str | None, ...]:
    (count,) = struct.unpack_from("!H", body)
    pos = 2
    values: list[str | None] = []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if size < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + size].decode("utf-8", "replace"))
            pos += size
    return tuple(values)
