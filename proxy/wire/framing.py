"""Finding message boundaries in a byte stream, without copying what is relayed.

The relay forwards each chunk it reads exactly as it arrived. It only needs to know
where messages start and end, which types went by, and the bodies of a few small
messages (ReadyForQuery, BackendKeyData, ...). `MessageScanner` does that in one
pass over the chunk, touching five header bytes per message; bodies it is not asked
to keep are skipped by arithmetic, however large they are.
"""

from __future__ import annotations

from .errors import ProtocolViolation
from .messages import FRONTEND_TYPES, frontend_length_limit

Event = tuple[int, bytes | None]
"""(type code, body) of a message the caller asked about; body is None for `note` types."""

_NO_EVENTS: list[Event] = []


class MessageScanner:
    """Incremental scanner for typed messages (type byte + int32 length + body).

    `note`: types to report as they start (body not kept).
    `keep`: types to report once complete, with their body; each is capped at
    `keep_limit` bytes, so a peer cannot make the proxy hold a large message (a
    larger one is a violation from a client, and reported without body from a server).
    `frontend`: validate types and lengths the way PostgreSQL's backend does, so
    garbage from a client is caught here rather than relayed.
    """

    __slots__ = (
        "_note",
        "_keep",
        "_keep_limit",
        "_frontend",
        "_partial_header",
        "_remaining",
        "_body",
        "_body_type",
        "messages",
        "valid_prefix",
        "offsets",
        "_track_offsets",
        "_oversize_ok",
        "_body_start",
    )

    def __init__(
        self,
        *,
        note: bytes = b"",
        keep: bytes = b"",
        keep_limit: int = 1 << 20,
        frontend: bool = False,
        oversize_ok: bool = False,
        track_offsets: bool = False,
    ) -> None:
        self._note = frozenset(note)
        self._keep = frozenset(keep)
        # Over-limit kept messages from a client: a violation, or (oversize_ok) reported without body.
        self._oversize_ok = oversize_ok
        # With track_offsets, `offsets` lists (start, end) of each returned event's message
        # relative to the chunk just fed: start < 0 if it began in an earlier chunk, end >
        # len(chunk) if it goes on in later ones.
        self._track_offsets = track_offsets
        self.offsets: list[tuple[int, int]] = []
        self._body_start = 0
        self._keep_limit = keep_limit
        self._frontend = frontend
        self._partial_header = b""
        self._remaining = 0  # body bytes of the current message not yet seen
        self._body: bytearray | None = None  # body being assembled for a kept type
        self._body_type = 0
        self.messages = 0  # messages started, for statistics
        # After a ProtocolViolation: how many bytes of the failing chunk were whole, valid messages.
        self.valid_prefix = 0

    @property
    def at_boundary(self) -> bool:
        """True when everything fed so far ends exactly at a message boundary."""
        return self._remaining == 0 and not self._partial_header

    def keep_also(self, types: bytes, *, track_offsets: bool | None = None) -> None:
        """Change which types are kept (and whether offsets are tracked) from the next feed on,
        e.g. CommandComplete while the session restores rewritten statements' tags."""
        self._keep = frozenset(types)
        if track_offsets is not None:
            self._track_offsets = track_offsets
            self.offsets = []

    def feed(self, data: bytes) -> list[Event]:
        """Consume one chunk; return events for noted and kept types, in stream order.

        Raises ProtocolViolation (frontend only) at the first invalid header; the
        bytes before it are valid: `valid_prefix` tells how many there were, and the
        exception's `events` holds their events.
        """
        events = _NO_EVENTS
        track = self._track_offsets
        if track:
            self.offsets = []
        pos = 0
        n = chunk_length = len(data)
        if self._remaining:
            take = self._remaining if self._remaining < n else n
            self._remaining -= take
            pos = take
            if self._body is not None:
                self._body += data[:take]
                if not self._remaining:
                    events = [(self._body_type, bytes(self._body))]
                    if track:
                        self.offsets.append((self._body_start, take))
                    self._body = None
                else:
                    self._body_start -= chunk_length  # still going: re-base on the next chunk
            if pos == n:
                return events
        shift = 0  # offset of `data` positions relative to the caller's chunk
        if self._partial_header:
            # A header split across reads: glue the few bytes back on (rare, cheap).
            shift = pos - len(self._partial_header)
            data = self._partial_header + data[pos:]
            self._partial_header = b""
            pos = 0
            n = len(data)
        note = self._note
        keep = self._keep
        frontend = self._frontend
        try:
            while pos + 5 <= n:
                type_code = data[pos]
                length = int.from_bytes(data[pos + 1 : pos + 5], "big")
                if frontend:
                    self._check_frontend(type_code, length, max(pos + shift, 0))
                elif length < 4:
                    raise ProtocolViolation(f"invalid message length {length} from server")
                end = pos + 1 + length
                self.messages += 1
                if type_code in note:
                    if events is _NO_EVENTS:
                        events = []
                    events.append((type_code, None))
                    if track:
                        self.offsets.append((pos + shift, end + shift))
                elif type_code in keep:
                    if length - 4 > self._keep_limit:
                        if frontend and not self._oversize_ok:
                            self.valid_prefix = max(pos + shift, 0)
                            raise ProtocolViolation(
                                f"message {chr(type_code)!r} of {length} bytes exceeds the proxy's limit"
                            )
                        # Report it, but do not hold the body.
                        if events is _NO_EVENTS:
                            events = []
                        events.append((type_code, None))
                        if track:
                            self.offsets.append((pos + shift, end + shift))
                    elif end <= n:
                        if events is _NO_EVENTS:
                            events = []
                        events.append((type_code, data[pos + 5 : end]))
                        if track:
                            self.offsets.append((pos + shift, end + shift))
                    else:
                        self._body = bytearray(data[pos + 5 :])
                        self._body_type = type_code
                        # Where it started, relative to the chunk that follows this one.
                        self._body_start = pos + shift - chunk_length
                pos = end
        except ProtocolViolation as exc:
            exc.events = events  # what came before the bad header still happened
            raise
        if pos > n:
            self._remaining = pos - n
        elif pos < n:
            self._partial_header = data[pos:]
        return events

    def _check_frontend(self, type_code: int, length: int, pos: int) -> None:
        if type_code not in FRONTEND_TYPES:
            self.valid_prefix = pos
            shown = chr(type_code) if 32 < type_code < 127 else f"\\x{type_code:02x}"
            raise ProtocolViolation(f"invalid frontend message type {shown!r}")
        if length < 4 or length > frontend_length_limit(type_code):
            self.valid_prefix = pos
            raise ProtocolViolation(
                f"invalid message length {length} for message type {chr(type_code)!r}"
            )
