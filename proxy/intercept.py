"""Client messages the proxy holds back to inspect: their statement text, and rebuilding them.

Only Query and Parse carry SQL. A held message is cut out of the byte stream at its exact
offsets; everything around it is relayed as it came.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import messages as m

QUERY = m.QUERY[0]
PARSE = m.PARSE[0]
BIND = m.BIND[0]


@dataclass(slots=True)
class Forward:
    """Bytes to relay as they are, and the message events they carry (for the query cycle)."""

    data: bytes
    events: list[tuple[int, bytes | None]]


@dataclass(slots=True)
class Held:
    """A Query or Parse message to inspect (and maybe rewrite) before it goes on."""

    type_code: int
    body: bytes
    raw: bytes
    # A Query sent again after a call the proxy did not foresee: run it as a collect run.
    retry: bool = False
    # A Bind whose model calls were pre-warmed with its pipeline's (it goes on unchanged).
    prewarmed: bool = False

    def sql(self) -> str:
        if self.type_code == QUERY:
            return self.body[: self.body.index(b"\0")].decode("utf-8", "replace")
        name_end = self.body.index(b"\0")
        query_end = self.body.index(b"\0", name_end + 1)
        return self.body[name_end + 1 : query_end].decode("utf-8", "replace")

    def with_sql(self, sql: str) -> bytes:
        """The same message carrying other SQL (statement name and parameter types kept)."""
        encoded = sql.encode()
        if self.type_code == QUERY:
            return m.message(m.QUERY, encoded + b"\0")
        name_end = self.body.index(b"\0")
        query_end = self.body.index(b"\0", name_end + 1)
        body = self.body[: name_end + 1] + encoded + b"\0" + self.body[query_end + 1 :]
        return m.message(m.PARSE, body)


def split(
    data: bytes,
    events: list[tuple[int, bytes | None]],
    offsets: list[tuple[int, int]],
    wanted: list[bool],
) -> list[Forward | Held]:
    """Cut a chunk into segments: relayed bytes, and the messages to hold (`wanted`)."""
    segments: list[Forward | Held] = []
    cursor = 0
    pending: list[tuple[int, bytes | None]] = []
    for (type_code, body), (start, end), hold in zip(events, offsets, wanted, strict=True):
        if hold and body is not None and 0 <= start and end <= len(data):
            if cursor < start or pending:
                segments.append(Forward(data[cursor:start], pending))
            segments.append(Held(type_code, body, data[start:end]))
            cursor, pending = end, []
        else:
            pending.append((type_code, body))
    if cursor < len(data) or pending:
        segments.append(Forward(data[cursor:], pending))
    return segments
