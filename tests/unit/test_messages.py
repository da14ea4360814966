"""Message builders and constants of proxy.wire.messages."""

from __future__ import annotations

import struct

import pytest

from proxy.wire import messages as m
from proxy.wire.framing import MessageScanner
from proxy.wire.startup import CancelRequest, SSLRequest, read_startup_packet


def split_message(raw: bytes) -> tuple[bytes, int, bytes]:
    (length,) = struct.unpack_from("!I", raw, 1)
    return raw[:1], length, raw[5:]


# --- constants -----------------------------------------------------------------------


def test_request_codes_are_the_magic_versions_postgresql_uses():
    assert m.CANCEL_REQUEST_CODE == (1234 << 16) | 5678
    assert m.SSL_REQUEST_CODE == (1234 << 16) | 5679
    assert m.GSSENC_REQUEST_CODE == (1234 << 16) | 5680


def test_protocol_versions():
    assert m.PROTOCOL_3_0 == 196608
    assert m.PROTOCOL_3_2 == 196610


def test_large_message_limit_is_max_alloc_size_minus_one():
    assert m.LARGE_MESSAGE_LIMIT == 0x3FFF_FFFE


def test_large_frontend_types_are_frontend_types():
    assert m.LARGE_FRONTEND_TYPES <= m.FRONTEND_TYPES


@pytest.mark.parametrize("type_code", list(b"BPQFdp"))
def test_frontend_length_limit_is_large_for_types_that_carry_data(type_code):
    assert m.frontend_length_limit(type_code) == m.LARGE_MESSAGE_LIMIT


@pytest.mark.parametrize("type_code", list(b"CcfDEHSX"))
def test_frontend_length_limit_is_small_for_control_messages(type_code):
    assert m.frontend_length_limit(type_code) == m.SMALL_MESSAGE_LIMIT
    assert m.SMALL_MESSAGE_LIMIT < m.LARGE_MESSAGE_LIMIT


# --- framing builders ----------------------------------------------------------------


def test_message_frames_type_length_and_body():
    assert m.message(b"Q", b"select 1\0") == b"Q\0\0\0\x0dselect 1\0"


def test_message_without_body_has_length_4():
    assert m.message(b"S") == b"S\0\0\0\x04"


def test_message_length_counts_itself_but_not_the_type_byte():
    body = bytes(range(256)) * 3
    type_code, length, rest = split_message(m.message(b"d", body))
    assert (type_code, length, rest) == (b"d", len(body) + 4, body)


def test_ready_for_query_defaults_to_idle_status():
    assert m.ready_for_query() == b"Z\0\0\0\x05I"


@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_ready_for_query_carries_the_status(status):
    assert m.ready_for_query(status) == b"Z\0\0\0\x05" + status


def test_terminate_is_an_empty_x_message():
    assert m.terminate() == b"X\0\0\0\x04"


def test_ssl_request_layout():
    assert m.ssl_request() == b"\0\0\0\x08\x04\xd2\x16\x2f"
    assert read_startup_packet(m.ssl_request()) == (SSLRequest(), 8)


def test_built_messages_scan_as_single_frontend_messages():
    for raw in (m.terminate(), m.message(b"Q", b"x\0"), m.message(b"S")):
        scanner = MessageScanner(note=raw[:1], frontend=True)
        assert scanner.feed(raw) == [(raw[0], None)]
        assert scanner.at_boundary


# --- error_response / parse_error_fields ---------------------------------------------


def test_error_response_layout():
    raw = m.error_response("FATAL", "08P01", "invalid message")
    type_code, length, body = split_message(raw)
    assert type_code == b"E"
    assert length == len(raw) - 1
    assert body == b"SFATAL\0VFATAL\0C08P01\0Minvalid message\0\0"


def test_error_response_with_detail_and_hint_layout():
    raw = m.error_response("ERROR", "42000", "bad", detail="more", hint="try this")
    _, _, body = split_message(raw)
    assert body == b"SERROR\0VERROR\0C42000\0Mbad\0Dmore\0Htry this\0\0"


def test_error_response_as_notice_uses_type_n():
    raw = m.error_response("WARNING", "01000", "careful", notice=True)
    type_code, _, body = split_message(raw)
    assert type_code == b"N"
    assert m.parse_error_fields(body)["S"] == "WARNING"


def test_error_response_omits_empty_detail_and_hint():
    _, _, body = split_message(m.error_response("ERROR", "XX000", "x", detail="", hint=None))
    assert set(m.parse_error_fields(body)) == {"S", "V", "C", "M"}


@pytest.mark.parametrize(
    "severity, sqlstate, text, detail, hint",
    [
        ("FATAL", "08P01", "invalid frontend message type 'Z'", None, None),
        ("ERROR", "57P01", "terminating connection", "The proxy is shutting down.", None),
        ("FATAL", "08006", "server closed the connection", "details", "reconnect"),
        ("NOTICE", "00000", "ünïcödé ✓ 日本語", "détail", "hïnt"),
        ("ERROR", "22023", "", None, None),
    ],
)
def test_error_response_round_trips_through_parse_error_fields(severity, sqlstate, text, detail, hint):
    raw = m.error_response(severity, sqlstate, text, detail=detail, hint=hint)
    _, _, body = split_message(raw)
    # An empty message text still makes a (lone "M") field, read back as "".
    expected = {"S": severity, "V": severity, "C": sqlstate, "M": text}
    if detail:
        expected["D"] = detail
    if hint:
        expected["H"] = hint
    assert m.parse_error_fields(body) == expected


def test_error_response_is_scanned_as_one_kept_backend_message():
    raw = m.error_response("FATAL", "53300", "too many clients")
    events = MessageScanner(keep=b"E").feed(raw)
    assert len(events) == 1
    type_code, body = events[0]
    assert type_code == ord("E")
    assert m.parse_error_fields(body)["C"] == "53300"


def test_parse_error_fields_reads_a_server_error_with_all_its_fields():
    body = (
        b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0"
        b"Fparse_relation.c\0L1449\0RparserOpenTable\0\0"
    )
    assert m.parse_error_fields(body) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42P01",
        "M": 'relation "nope" does not exist',
        "P": "15",
        "F": "parse_relation.c",
        "L": "1449",
        "R": "parserOpenTable",
    }


def test_parse_error_fields_replaces_invalid_utf8():
    assert m.parse_error_fields(b"Mbad \xff byte\0\0") == {"M": "bad \ufffd byte"}


def test_parse_error_fields_of_empty_body_is_empty():
    assert m.parse_error_fields(b"") == {}
    assert m.parse_error_fields(b"\0") == {}


def test_parse_error_fields_tolerates_a_missing_final_terminator():
    assert m.parse_error_fields(b"SFATAL\0Mtruncated") == {"S": "FATAL", "M": "truncated"}


# --- cancel_request ------------------------------------------------------------------


@pytest.mark.parametrize("key_length", [4, 32, 256])
def test_cancel_request_layout(key_length):
    key = bytes((i * 13 + 1) % 256 for i in range(key_length))
    raw = m.cancel_request(0x01020304, key)
    assert len(raw) == 12 + key_length
    length, code, pid = struct.unpack_from("!III", raw)
    assert length == len(raw)
    assert code == m.CANCEL_REQUEST_CODE
    assert pid == 0x01020304
    assert raw[12:] == key


def test_cancel_request_with_4_byte_key_is_the_classic_16_byte_packet():
    assert m.cancel_request(42, b"\xaa\xbb\xcc\xdd") == (
        b"\0\0\0\x10" + b"\x04\xd2\x16\x2e" + b"\0\0\0\x2a" + b"\xaa\xbb\xcc\xdd"
    )


@pytest.mark.parametrize("key_length", [4, 32, 256])
def test_cancel_request_round_trips_through_read_startup_packet(key_length):
    key = bytes((i * 7) % 256 for i in range(key_length))
    raw = m.cancel_request(0xFFFF_FFFF, key)
    assert read_startup_packet(raw) == (CancelRequest(0xFFFF_FFFF, key, raw), len(raw))
