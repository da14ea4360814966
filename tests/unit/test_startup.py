"""read_startup_packet: the untyped packets before the first typed message."""

from __future__ import annotations

import struct

import pytest

from proxy.wire import messages as m
from proxy.wire.errors import ProtocolViolation
from proxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    read_startup_packet,
)


def packet(code: int, body: bytes = b"") -> bytes:
    """An untyped packet: int32 length (self-inclusive), int32 code/version, body."""
    return struct.pack("!iI", 8 + len(body), code) + body


def params(*pairs: tuple[str, str], terminator: bool = True) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)
    return body + (b"\0" if terminator else b"")


def startup(version: int = m.PROTOCOL_3_0, *pairs: tuple[str, str]) -> bytes:
    return packet(version, params(*pairs))


def cancel(process_id: int, key: bytes) -> bytes:
    return struct.pack("!iII", 12 + len(key), m.CANCEL_REQUEST_CODE, process_id) + key


def with_length(raw: bytes, length: int) -> bytes:
    return struct.pack("!i", length) + raw[4:]


def violation(buffer: bytes, match: str | None = None) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation, match=match) as caught:
        read_startup_packet(buffer)
    assert caught.value.sqlstate == "08P01"
    return caught.value


# --- encryption requests -------------------------------------------------------------


def test_reads_ssl_request():
    assert read_startup_packet(packet(m.SSL_REQUEST_CODE)) == (SSLRequest(), 8)


def test_reads_ssl_request_built_by_messages_ssl_request():
    assert read_startup_packet(m.ssl_request()) == (SSLRequest(), 8)


def test_reads_gssenc_request():
    assert read_startup_packet(packet(m.GSSENC_REQUEST_CODE)) == (GSSENCRequest(), 8)


def test_ssl_request_consumes_only_its_own_eight_bytes():
    # A client that pipelines its StartupMessage after the SSLRequest (or a TLS
    # ClientHello after it) must not have those bytes eaten.
    follow = startup(m.PROTOCOL_3_0, ("user", "alice"))
    buffer = bytearray(packet(m.SSL_REQUEST_CODE) + follow)
    first, used = read_startup_packet(buffer)
    assert (first, used) == (SSLRequest(), 8)
    second, used2 = read_startup_packet(buffer[used:])
    assert isinstance(second, StartupMessage)
    assert used2 == len(follow)


@pytest.mark.parametrize("code", [m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE])
def test_rejects_encryption_request_with_a_body(code):
    violation(packet(code, b"\0\0\0\0"), "encryption request")


# --- CancelRequest -------------------------------------------------------------------


def test_reads_cancel_request_with_4_byte_key_of_protocol_3_0():
    raw = cancel(4242, b"\xde\xad\xbe\xef")
    assert len(raw) == 16
    result, used = read_startup_packet(raw)
    assert result == CancelRequest(4242, b"\xde\xad\xbe\xef", raw)
    assert used == 16
    assert result.raw == raw


def test_reads_cancel_request_with_32_byte_key_of_protocol_3_2():
    key = bytes(range(32))
    raw = cancel(7, key)
    result, used = read_startup_packet(raw)
    assert isinstance(result, CancelRequest)
    assert (result.process_id, result.secret_key, result.raw, used) == (7, key, raw, 44)


def test_reads_cancel_request_with_the_largest_256_byte_key():
    key = b"k" * 256
    result, used = read_startup_packet(cancel(1, key))
    assert isinstance(result, CancelRequest)
    assert result.secret_key == key
    assert used == 12 + 256


def test_reads_cancel_request_process_id_as_unsigned():
    result, _ = read_startup_packet(cancel(0xFFFF_FFFE, b"abcd"))
    assert isinstance(result, CancelRequest)
    assert result.process_id == 0xFFFF_FFFE


def test_reads_cancel_request_built_by_messages_cancel_request():
    raw = m.cancel_request(99, b"s" * 32)
    assert read_startup_packet(raw) == (CancelRequest(99, b"s" * 32, raw), len(raw))


def test_rejects_cancel_request_with_key_longer_than_256_bytes():
    violation(cancel(1, b"k" * 257), "cancel request")


def test_rejects_cancel_request_without_a_key():
    violation(cancel(1, b""), "cancel request")


def test_cancel_request_with_incomplete_key_needs_more_bytes():
    raw = cancel(1, bytes(32))
    assert read_startup_packet(raw[:20]) == (None, 0)


def test_cancel_request_consumes_only_its_own_bytes():
    raw = cancel(5, b"abcd")
    result, used = read_startup_packet(raw + b"garbage after it")
    assert isinstance(result, CancelRequest)
    assert used == 16
    assert result.raw == raw


# --- StartupMessage ------------------------------------------------------------------


def test_reads_startup_message_of_protocol_3_0_with_parameters():
    raw = startup(
        m.PROTOCOL_3_0,
        ("user", "alice"),
        ("database", "shop"),
        ("application_name", "psql"),
        ("client_encoding", "UTF8"),
    )
    result, used = read_startup_packet(raw)
    assert isinstance(result, StartupMessage)
    assert used == len(raw)
    assert result.protocol_version == m.PROTOCOL_3_0
    assert result.parameters == {
        "user": "alice",
        "database": "shop",
        "application_name": "psql",
        "client_encoding": "UTF8",
    }
    assert result.user == "alice"
    assert result.database == "shop"
    assert result.raw == raw


def test_reads_startup_message_of_protocol_3_2_with_protocol_options():
    raw = startup(m.PROTOCOL_3_2, ("user", "bob"), ("_pq_.test_option", "on"), ("options", "-c x=1"))
    result, used = read_startup_packet(raw)
    assert isinstance(result, StartupMessage)
    assert used == len(raw)
    assert result.protocol_version == m.PROTOCOL_3_2
    assert result.parameters == {"user": "bob", "_pq_.test_option": "on", "options": "-c x=1"}


def test_startup_message_database_defaults_to_the_user_name():
    result, _ = read_startup_packet(startup(m.PROTOCOL_3_0, ("user", "carol")))
    assert isinstance(result, StartupMessage)
    assert result.database == "carol"


def test_startup_message_empty_database_defaults_to_the_user_name():
    result, _ = read_startup_packet(startup(m.PROTOCOL_3_0, ("user", "carol"), ("database", "")))
    assert isinstance(result, StartupMessage)
    assert result.database == "carol"


def test_startup_message_keeps_empty_parameter_values():
    result, _ = read_startup_packet(startup(m.PROTOCOL_3_0, ("user", "u"), ("options", "")))
    assert isinstance(result, StartupMessage)
    assert result.parameters == {"user": "u", "options": ""}


def test_startup_message_decodes_utf8_parameters():
    raw = startup(m.PROTOCOL_3_0, ("user", "jürgen"), ("application_name", "日本"))
    result, _ = read_startup_packet(raw)
    assert isinstance(result, StartupMessage)
    assert result.user == "jürgen"
    assert result.parameters["application_name"] == "日本"


def test_startup_message_with_newer_minor_version_is_read_for_negotiation():
    raw = startup((3 << 16) | 9, ("user", "u"))
    result, _ = read_startup_packet(raw)
    assert isinstance(result, StartupMessage)
    assert result.protocol_version == (3 << 16) | 9


def test_startup_message_is_read_from_a_bytearray_with_trailing_bytes():
    raw = startup(m.PROTOCOL_3_0, ("user", "u"))
    buffer = bytearray(raw + b"Q\0\0\0\x05x")
    result, used = read_startup_packet(buffer)
    assert isinstance(result, StartupMessage)
    assert used == len(raw)
    assert result.raw == raw
    assert type(result.raw) is bytes


def test_rejects_startup_message_without_user():
    violation(startup(m.PROTOCOL_3_0, ("database", "shop")), "no PostgreSQL user name")


def test_rejects_startup_message_with_empty_user():
    violation(startup(m.PROTOCOL_3_0, ("user", ""), ("database", "shop")), "no PostgreSQL user name")


def test_rejects_startup_message_without_any_parameters():
    violation(packet(m.PROTOCOL_3_0, b"\0"), "no PostgreSQL user name")


def test_rejects_startup_message_with_empty_body():
    violation(packet(m.PROTOCOL_3_0, b""), "expected terminator")


def test_rejects_startup_message_whose_last_value_is_unterminated():
    violation(packet(m.PROTOCOL_3_0, b"user\0alice"), "expected terminator")


def test_rejects_startup_message_missing_the_list_terminator():
    violation(packet(m.PROTOCOL_3_0, params(("user", "alice"), terminator=False)), "terminator")


def test_rejects_startup_message_with_a_parameter_after_the_terminator():
    violation(packet(m.PROTOCOL_3_0, b"user\0alice\0\0extra\0"), "terminator")


def test_rejects_startup_message_with_bytes_after_the_terminator():
    violation(packet(m.PROTOCOL_3_0, b"user\0alice\0\0extra"), "terminator")


def test_rejects_startup_message_with_odd_parameter_count():
    body = b"user\0alice\0database\0\0"  # "database" has no value
    violation(packet(m.PROTOCOL_3_0, body), "expected terminator as last byte")


def test_rejects_startup_message_with_two_terminators():
    violation(packet(m.PROTOCOL_3_0, params(("user", "alice")) + b"\0"))


@pytest.mark.parametrize(
    "body",
    [
        b"user\0al\xffice\0\0",
        b"us\xc3er\0alice\0\0",
        b"user\0alice\0application_name\0\xed\xa0\x80\0\0",  # a UTF-16 surrogate
    ],
)
def test_rejects_startup_message_that_is_not_utf8(body):
    violation(packet(m.PROTOCOL_3_0, body), "invalid byte sequence")


@pytest.mark.parametrize("major, minor", [(2, 0), (1, 0), (4, 0), (0, 0), (1234, 5677)])
def test_rejects_unsupported_protocol_versions(major, minor):
    exc = violation(startup((major << 16) | minor, ("user", "u")), "unsupported frontend protocol")
    assert f"{major}.{minor}" in str(exc)


def test_rejects_protocol_2_0_startup_layout():
    # A v2 StartupPacket: fixed 296 bytes, version 2.0, user and database in fixed fields.
    body = b"db".ljust(64, b"\0") + b"user".ljust(32, b"\0") + bytes(64 + 64 + 64)
    raw = struct.pack("!iI", 8 + len(body), 2 << 16) + body
    violation(raw, "unsupported frontend protocol 2.0")


# --- lengths and incomplete buffers ---------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 4, 7, -1, -8, -(2**31)])
def test_rejects_startup_length_below_8(length):
    raw = with_length(startup(m.PROTOCOL_3_0, ("user", "u")), length)
    violation(raw, "invalid length of startup packet")


@pytest.mark.parametrize("length", [10005, 20_000, 2**31 - 1])
def test_rejects_startup_length_above_the_limit_from_the_first_8_bytes(length):
    # The verdict comes as soon as the length is known, without waiting for the body.
    raw = struct.pack("!iI", length, m.PROTOCOL_3_0)
    violation(raw, "invalid length of startup packet")


def test_accepts_startup_packet_of_exactly_10000_bytes():
    base = startup(m.PROTOCOL_3_0, ("user", "u"), ("application_name", ""))
    pad = "x" * (10000 - len(base))
    raw = startup(m.PROTOCOL_3_0, ("user", "u"), ("application_name", pad))
    assert len(raw) == 10000
    result, used = read_startup_packet(raw)
    assert isinstance(result, StartupMessage)
    assert used == 10000


def test_accepts_startup_packet_of_10004_bytes_like_postgres():
    base = startup(m.PROTOCOL_3_0, ("user", "u"), ("application_name", ""))
    pad = "x" * (10004 - len(base))
    raw = startup(m.PROTOCOL_3_0, ("user", "u"), ("application_name", pad))
    assert len(raw) == 10004
    result, _ = read_startup_packet(raw)
    assert isinstance(result, StartupMessage)


@pytest.mark.parametrize("size", range(8))
def test_fewer_than_8_bytes_need_more_data(size):
    raw = startup(m.PROTOCOL_3_0, ("user", "u"))
    assert read_startup_packet(raw[:size]) == (None, 0)
    assert read_startup_packet(bytearray(raw[:size])) == (None, 0)


def test_every_strict_prefix_of_a_valid_packet_needs_more_data():
    for raw in (
        startup(m.PROTOCOL_3_2, ("user", "alice"), ("database", "shop")),
        cancel(3, bytes(32)),
        packet(m.SSL_REQUEST_CODE),
    ):
        for size in range(len(raw)):
            assert read_startup_packet(raw[:size]) == (None, 0), (raw, size)
        result, used = read_startup_packet(raw)
        assert result is not None and used == len(raw)


def test_incomplete_packet_is_not_validated_until_complete():
    # Garbage in the body of a packet whose length is fine is only seen once all of it arrived.
    raw = packet(m.PROTOCOL_3_0, b"user\0\xff\xfe\0\0")
    assert read_startup_packet(raw[:-1]) == (None, 0)
    violation(raw)


def test_empty_buffer_needs_more_data():
    assert read_startup_packet(b"") == (None, 0)
