"""Message type codes and builders for the PostgreSQL v3 wire protocol.

Only what the proxy itself has to say is built here (errors it owes a client, the
startup answers, cancel and terminate for the server); everything else is relayed
as the peer wrote it.
"""

from __future__ import annotations

import struct

# Special request codes carried in the version field of a startup packet.
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2

# Limits PostgreSQL itself applies (src/include/libpq/libpq.h).
MAX_STARTUP_PACKET_LENGTH = 10000
SMALL_MESSAGE_LIMIT = 10000  # PQ_SMALL_MESSAGE_LIMIT: largest length (incl. itself) accepted
LARGE_MESSAGE_LIMIT = 0x3FFFFFFF - 1  # PQ_LARGE_MESSAGE_LIMIT = MaxAllocSize - 1

# Frontend (client -> server) message types.
BIND = b"B"
CLOSE = b"C"
COPY_DATA = b"d"
COPY_DONE = b"c"
COPY_FAIL = b"f"
DESCRIBE = b"D"
EXECUTE = b"E"
FLUSH = b"H"
FUNCTION_CALL = b"F"
PARSE = b"P"
PASSWORD = b"p"  # also SASLInitialResponse, SASLResponse, GSSResponse
QUERY = b"Q"
SYNC = b"S"
TERMINATE = b"X"

# Backend (server -> client) message types.
AUTHENTICATION = b"R"
COMMAND_COMPLETE = b"C"
BACKEND_KEY_DATA = b"K"
ERROR_RESPONSE = b"E"
NOTICE_RESPONSE = b"N"
NOTIFICATION_RESPONSE = b"A"
PARAMETER_STATUS = b"S"
READY_FOR_QUERY = b"Z"
COPY_IN_RESPONSE = b"G"
COPY_OUT_RESPONSE = b"H"
COPY_BOTH_RESPONSE = b"W"
NEGOTIATE_PROTOCOL_VERSION = b"v"

# Frontend messages that may legitimately be large; all others are capped at
# SMALL_MESSAGE_LIMIT, as PostgreSQL does (postgres.c, SocketBackend()).
LARGE_FRONTEND_TYPES = frozenset(b"BPQFdp")
FRONTEND_TYPES = frozenset(b"BCdcfDEHFPpQSX")


def frontend_length_limit(type_code: int) -> int:
    """Largest body+length a frontend message of this type may declare."""
    return LARGE_MESSAGE_LIMIT if type_code in LARGE_FRONTEND_TYPES else SMALL_MESSAGE_LIMIT


def message(type_code: bytes, body: bytes = b"") -> bytes:
    """Frame a body as a typed message: type byte, int32 length (self-inclusive), body."""
    return type_code + struct.pack("!I", len(body) + 4) + body


def error_response(
    severity: str,
    sqlstate: str,
    text: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    notice: bool = False,
) -> bytes:
    """An ErrorResponse (or NoticeResponse) with the fields libpq and drivers read."""
    fields = [
        b"S" + severity.encode(),
        b"V" + severity.encode(),
        b"C" + sqlstate.encode(),
        b"M" + text.encode(),
    ]
    if detail:
        fields.append(b"D" + detail.encode())
    if hint:
        fields.append(b"H" + hint.encode())
    body = b"\0".join(fields) + b"\0\0"
    return message(NOTICE_RESPONSE if notice else ERROR_RESPONSE, body)


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(READY_FOR_QUERY, status)


def terminate() -> bytes:
    return message(TERMINATE)


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def cancel_request(process_id: int, secret_key: bytes) -> bytes:
    """A CancelRequest; secret_key is 4 bytes in protocol 3.0, up to 256 in 3.2."""
    return struct.pack("!III", 12 + len(secret_key), CANCEL_REQUEST_CODE, process_id) + secret_key


def parse_error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse body, keyed by their one-letter code."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields
