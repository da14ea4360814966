"""The untyped packets a client sends before the first typed message.

A connection opens with zero or more negotiation requests (SSLRequest, GSSENCRequest)
and then either a StartupMessage or a CancelRequest. These packets have a length but
no type byte, so they are read with their own small parser.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import ProtocolViolation
from .messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET_LENGTH,
    SSL_REQUEST_CODE,
)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: bytes
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol_version: int
    parameters: dict[str, str]
    raw: bytes = field(repr=False)

    @property
    def user(self) -> str:
        return self.parameters.get("user", "")

    @property
    def database(self) -> str:
        return self.parameters.get("database") or self.user


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def read_startup_packet(buffer: bytes | bytearray) -> tuple[StartupPacket | None, int]:
    """Parse one startup-phase packet from the front of `buffer`.

    Returns (packet, bytes consumed), or (None, 0) when more bytes are needed.
    Raises ProtocolViolation for anything PostgreSQL itself would refuse.
    """
    if len(buffer) < 8:
        return None, 0
    length, code = struct.unpack_from("!iI", buffer)
    # PostgreSQL bounds the packet without its length word (postmaster.c).
    if length < 8 or length - 4 > MAX_STARTUP_PACKET_LENGTH:
        raise ProtocolViolation(f"invalid length of startup packet: {length}")
    if len(buffer) < length:
        return None, 0
    raw = bytes(buffer[:length])
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if length != 8:
            raise ProtocolViolation("invalid length of encryption request packet")
        return (SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()), length
    if code == CANCEL_REQUEST_CODE:
        # Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256.
        if length < 16 or length > 12 + 256:
            raise ProtocolViolation("invalid length of cancel request packet")
        (process_id,) = struct.unpack_from("!I", raw, 8)
        return CancelRequest(process_id, raw[12:], raw), length
    major = code >> 16
    if major != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {major}.{code & 0xFFFF}: server supports 3.0 to 3.2"
        )
    return StartupMessage(code, _parse_parameters(raw[8:]), raw), length


def _parse_parameters(body: bytes) -> dict[str, str]:
    """Name/value pairs up to an empty name, which must be the packet's last byte (as in
    PostgreSQL's ProcessStartupPacket)."""
    params: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        name_end = body.find(b"\0", offset)
        if name_end == offset:  # the terminator
            break
        value_end = body.find(b"\0", name_end + 1) if name_end != -1 else -1
        if value_end == -1:
            raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
        try:
            params[body[offset:name_end].decode()] = body[name_end + 1 : value_end].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("invalid byte sequence in startup packet") from exc
        offset = value_end + 1
    if offset != len(body) - 1:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    if not params.get("user"):
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
    return params
