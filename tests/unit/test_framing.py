"""MessageScanner: message boundaries, noted and kept types, frontend validation.

Everything here is bytes in, events out: no server, no sockets.
"""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest

from proxy.wire import messages as m
from proxy.wire.cycle import QueryCycle
from proxy.wire.errors import ProtocolViolation
from proxy.wire.framing import MessageScanner


def msg(type_code: bytes, body: bytes = b"") -> bytes:
    return m.message(type_code, body)


def header(type_code: bytes, length: int) -> bytes:
    """A bare header declaring `length` (self-inclusive), whatever the body that follows."""
    return type_code + struct.pack("!I", length)


def feed_chunks(scanner: MessageScanner, chunks) -> list[tuple[int, bytes | None]]:
    events: list[tuple[int, bytes | None]] = []
    for chunk in chunks:
        events.extend(scanner.feed(chunk))
    return events


def boundaries(stream_parts: list[bytes]) -> set[int]:
    offsets = {0}
    total = 0
    for part in stream_parts:
        total += len(part)
        offsets.add(total)
    return offsets


# A server's answer to a login and one query: kept types (ReadyForQuery, BackendKeyData,
# ErrorResponse) mixed with noted ones (DataRow, CommandComplete) and ignored ones.
BACKEND_PARTS = [
    msg(b"R", struct.pack("!I", 0)),
    msg(b"S", b"client_encoding\0UTF8\0"),
    msg(b"K", struct.pack("!I", 4242) + bytes(range(32))),
    msg(b"Z", b"I"),
    msg(b"T", b"\0\1" + b"?column?\0" + bytes(18)),
    msg(b"D", b"\0\1\0\0\0\1" + b"1"),
    msg(b"D", b"\0\1\0\0\0\5" + b"hello"),
    msg(b"C", b"SELECT 2\0"),
    msg(b"N", b"SNOTICE\0C00000\0Mhi\0\0"),
    msg(b"E", b"SERROR\0VERROR\0C42601\0Msyntax error\0\0"),
    msg(b"I"),  # EmptyQueryResponse: a message with no body at all
    msg(b"Z", b"T"),
]
BACKEND_STREAM = b"".join(BACKEND_PARTS)
BACKEND_NOTE = b"DC"
BACKEND_KEEP = b"ZKE"
BACKEND_EXPECTED = [
    (ord("K"), struct.pack("!I", 4242) + bytes(range(32))),
    (ord("Z"), b"I"),
    (ord("D"), None),
    (ord("D"), None),
    (ord("C"), None),
    (ord("E"), b"SERROR\0VERROR\0C42601\0Msyntax error\0\0"),
    (ord("Z"), b"T"),
]

# A client's simple query, an extended-protocol round, a COPY and a goodbye.
FRONTEND_PARTS = [
    msg(b"Q", b"select 1\0"),
    msg(b"P", b"\0select $1\0\0\0"),
    msg(b"B", b"\0\0\0\0\0\1\0\0\0\0\0\0"),
    msg(b"D", b"P\0"),
    msg(b"E", b"\0\0\0\0\0"),
    msg(b"S"),
    msg(b"Q", b"copy t from stdin\0"),
    msg(b"d", b"1\tone\n"),
    msg(b"d", b"2\ttwo\n"),
    msg(b"c"),
    msg(b"H"),
    msg(b"X"),
]
FRONTEND_STREAM = b"".join(FRONTEND_PARTS)
FRONTEND_KEEP = b"d"
FRONTEND_EXPECTED = [
    (ord("Q"), None),
    (ord("P"), None),
    (ord("B"), None),
    (ord("D"), None),
    (ord("E"), None),
    (ord("S"), None),
    (ord("Q"), None),
    (ord("d"), b"1\tone\n"),
    (ord("d"), b"2\ttwo\n"),
    (ord("c"), None),
    (ord("H"), None),
    (ord("X"), None),
]

SCENARIOS = {
    "backend": (
        lambda: MessageScanner(note=BACKEND_NOTE, keep=BACKEND_KEEP),
        BACKEND_PARTS,
        BACKEND_EXPECTED,
    ),
    "frontend": (
        lambda: MessageScanner(note=QueryCycle.FRONTEND_NOTE, keep=FRONTEND_KEEP, frontend=True),
        FRONTEND_PARTS,
        FRONTEND_EXPECTED,
    ),
}


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request):
    make, parts, expected = SCENARIOS[request.param]
    return make, parts, b"".join(parts), expected


# --- whole streams -------------------------------------------------------------------


def test_scanner_reports_noted_and_kept_messages_of_a_whole_backend_stream():
    scanner = MessageScanner(note=BACKEND_NOTE, keep=BACKEND_KEEP)
    assert scanner.feed(BACKEND_STREAM) == BACKEND_EXPECTED
    assert scanner.at_boundary
    assert scanner.messages == len(BACKEND_PARTS)


def test_scanner_reports_noted_and_kept_messages_of_a_whole_frontend_stream():
    scanner = MessageScanner(note=QueryCycle.FRONTEND_NOTE, keep=FRONTEND_KEEP, frontend=True)
    assert scanner.feed(FRONTEND_STREAM) == FRONTEND_EXPECTED
    assert scanner.at_boundary
    assert scanner.messages == len(FRONTEND_PARTS)


def test_scanner_without_note_or_keep_reports_nothing_but_counts_messages(scenario):
    _, parts, stream, _ = scenario
    scanner = MessageScanner()
    assert scanner.feed(stream) == []
    assert scanner.messages == len(parts)
    assert scanner.at_boundary


def test_scanner_kept_bodies_are_immutable_bytes_even_when_assembled_from_chunks(scenario):
    make, _, stream, _ = scenario
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        for _, body in feed_chunks(make(), chunks):
            assert body is None or type(body) is bytes


def test_scanner_is_at_boundary_before_anything_is_fed():
    scanner = MessageScanner()
    assert scanner.at_boundary
    assert scanner.messages == 0


def test_scanner_feeding_an_empty_chunk_changes_nothing(scenario):
    make, _, stream, expected = scenario
    # Empty chunks at the start, in the middle of a header, in the middle of a body.
    for cut in (0, 3, 7, len(stream) // 2, len(stream)):
        scanner = make()
        events = scanner.feed(b"") + scanner.feed(stream[:cut])
        boundary_before = scanner.at_boundary
        events += scanner.feed(b"")
        assert scanner.at_boundary == boundary_before
        events += scanner.feed(stream[cut:]) + scanner.feed(b"")
        assert events == expected
        assert scanner.at_boundary


# --- every split position ------------------------------------------------------------


def test_scanner_events_are_identical_when_fed_one_byte_at_a_time(scenario):
    make, parts, stream, expected = scenario
    scanner = make()
    events = feed_chunks(scanner, (stream[i : i + 1] for i in range(len(stream))))
    assert events == expected
    assert scanner.messages == len(parts)
    assert scanner.at_boundary


def test_scanner_events_are_identical_for_every_two_chunk_split(scenario):
    make, parts, stream, expected = scenario
    for cut in range(len(stream) + 1):
        scanner = make()
        events = feed_chunks(scanner, [stream[:cut], stream[cut:]])
        assert events == expected, f"split at byte {cut}"
        assert scanner.messages == len(parts), f"split at byte {cut}"
        assert scanner.at_boundary, f"split at byte {cut}"


def test_scanner_events_are_identical_for_every_three_chunk_split_of_a_short_stream():
    parts = [msg(b"Z", b"I"), msg(b"D", b"\0\1\0\0\0\2ab"), msg(b"K", b"\0\0\0\7key!"), msg(b"C", b"X\0")]
    stream = b"".join(parts)
    expected = [(ord("Z"), b"I"), (ord("D"), None), (ord("K"), b"\0\0\0\7key!"), (ord("C"), None)]
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            scanner = MessageScanner(note=b"DC", keep=b"ZK")
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert feed_chunks(scanner, chunks) == expected, (first, second)
            assert scanner.at_boundary


def test_scanner_events_are_identical_for_random_chunkings(scenario):
    make, _, stream, expected = scenario
    rng = random.Random(20240611)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 12)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert feed_chunks(make(), chunks) == expected, cuts


def test_scanner_at_boundary_is_true_exactly_at_message_ends_when_fed_bytewise(scenario):
    make, parts, stream, _ = scenario
    ends = boundaries(parts)
    scanner = make()
    for i in range(len(stream)):
        scanner.feed(stream[i : i + 1])
        assert scanner.at_boundary == ((i + 1) in ends), f"after byte {i + 1}"


def test_scanner_at_boundary_after_every_two_chunk_prefix(scenario):
    make, parts, stream, _ = scenario
    ends = boundaries(parts)
    for cut in range(len(stream) + 1):
        scanner = make()
        scanner.feed(stream[:cut])
        assert scanner.at_boundary == (cut in ends), f"prefix of {cut} bytes"


def test_scanner_reports_noted_type_as_soon_as_its_header_arrives():
    scanner = MessageScanner(note=b"D")
    row = msg(b"D", b"x" * 100)
    assert scanner.feed(row[:4]) == []
    assert scanner.feed(row[4:5]) == [(ord("D"), None)]
    assert not scanner.at_boundary
    assert scanner.feed(row[5:]) == []
    assert scanner.at_boundary


def test_scanner_counts_messages_as_they_start():
    scanner = MessageScanner()
    row = msg(b"D", b"x" * 10)
    scanner.feed(row[:5])
    assert scanner.messages == 1
    scanner.feed(row[5:] + row[:2])
    assert scanner.messages == 1
    scanner.feed(row[2:])
    assert scanner.messages == 2


# --- kept types ----------------------------------------------------------------------


def test_scanner_reports_kept_body_split_across_three_chunks():
    body = b"SERROR\0VERROR\0C22012\0Mdivision by zero\0\0"
    error = msg(b"E", body)
    scanner = MessageScanner(keep=b"E")
    assert scanner.feed(error[:9]) == []
    assert not scanner.at_boundary
    assert scanner.feed(error[9:20]) == []
    assert not scanner.at_boundary
    assert scanner.feed(error[20:]) == [(ord("E"), body)]
    assert scanner.at_boundary


def test_scanner_reports_kept_body_when_its_header_is_split_too():
    body = struct.pack("!I", 77) + b"k" * 32
    key_data = msg(b"K", body)
    scanner = MessageScanner(keep=b"K")
    assert scanner.feed(key_data[:2]) == []
    assert scanner.feed(key_data[2:7]) == []
    assert scanner.feed(key_data[7:30]) == []
    assert scanner.feed(key_data[30:]) == [(ord("K"), body)]
    assert scanner.at_boundary


def test_scanner_reports_completed_kept_body_before_messages_later_in_the_same_chunk():
    ready = msg(b"Z", b"I")
    error = msg(b"E", b"Mboom\0\0")
    scanner = MessageScanner(note=b"C", keep=b"ZE")
    assert scanner.feed(error[:8]) == []
    events = scanner.feed(error[8:] + msg(b"C", b"X\0") + ready)
    assert events == [(ord("E"), b"Mboom\0\0"), (ord("C"), None), (ord("Z"), b"I")]


def test_scanner_reports_kept_message_with_empty_body():
    scanner = MessageScanner(keep=b"I")
    assert scanner.feed(msg(b"I")) == [(ord("I"), b"")]


def test_scanner_keeps_body_of_exactly_keep_limit_bytes():
    body = b"x" * 64
    scanner = MessageScanner(keep=b"E", keep_limit=64)
    assert scanner.feed(msg(b"E", body)) == [(ord("E"), body)]
    scanner = MessageScanner(keep=b"E", keep_limit=64, frontend=True)
    assert scanner.feed(msg(b"E", body)) == [(ord("E"), body)]


def test_backend_scanner_reports_kept_type_over_keep_limit_without_its_body():
    body = b"x" * 65
    stream = msg(b"E", body) + msg(b"Z", b"I")
    scanner = MessageScanner(keep=b"EZ", keep_limit=64)
    assert scanner.feed(stream) == [(ord("E"), None), (ord("Z"), b"I")]
    assert scanner.at_boundary


def test_backend_scanner_reports_oversized_kept_type_once_and_skips_its_body_in_pieces():
    body_length = 10_000
    scanner = MessageScanner(keep=b"E", keep_limit=100)
    assert scanner.feed(header(b"E", body_length + 4)) == [(ord("E"), None)]
    assert scanner._body is None
    for _ in range(body_length // 1000 - 1):
        assert scanner.feed(b"y" * 1000) == []
        assert not scanner.at_boundary
        assert scanner._body is None
    assert scanner.feed(b"y" * 1000 + msg(b"E", b"small")) == [(ord("E"), b"small")]
    assert scanner.at_boundary


def test_backend_scanner_oversized_kept_type_split_at_every_position_reports_the_same():
    stream = msg(b"Z", b"I") + msg(b"E", b"e" * 40) + msg(b"Z", b"T")
    expected = [(ord("Z"), b"I"), (ord("E"), None), (ord("Z"), b"T")]
    for cut in range(len(stream) + 1):
        scanner = MessageScanner(keep=b"ZE", keep_limit=16)
        assert feed_chunks(scanner, [stream[:cut], stream[cut:]]) == expected, cut
        assert scanner.at_boundary


def test_frontend_scanner_rejects_kept_type_over_keep_limit():
    scanner = MessageScanner(keep=b"d", keep_limit=8, frontend=True)
    with pytest.raises(ProtocolViolation, match="exceeds the proxy's limit"):
        scanner.feed(msg(b"d", b"123456789"))
    assert scanner.valid_prefix == 0


def test_frontend_scanner_valid_prefix_counts_messages_before_an_oversized_kept_type():
    valid = msg(b"Q", b"select 1\0") + msg(b"d", b"12345678") + msg(b"S")
    scanner = MessageScanner(note=b"Q", keep=b"d", keep_limit=8, frontend=True)
    with pytest.raises(ProtocolViolation):
        scanner.feed(valid + msg(b"d", b"123456789") + msg(b"S"))
    assert scanner.valid_prefix == len(valid)


def test_frontend_scanner_oversized_kept_type_is_caught_from_its_header_alone():
    # Only the header has arrived; the proxy refuses before any of the body is seen.
    valid = msg(b"S")
    scanner = MessageScanner(keep=b"d", keep_limit=8, frontend=True)
    with pytest.raises(ProtocolViolation):
        scanner.feed(valid + header(b"d", 4 + 1_000_000))
    assert scanner.valid_prefix == len(valid)


def test_frontend_scanner_valid_prefix_is_zero_when_oversized_header_was_glued_from_previous_chunk():
    scanner = MessageScanner(keep=b"d", keep_limit=8, frontend=True)
    oversized = msg(b"d", b"x" * 20)
    assert scanner.feed(msg(b"S") + oversized[:3]) == []
    with pytest.raises(ProtocolViolation):
        scanner.feed(oversized[3:])
    assert scanner.valid_prefix == 0


# --- huge bodies ---------------------------------------------------------------------


def test_scanner_skips_a_100_mb_data_row_fed_in_pieces_without_holding_it():
    declared_body = 100 * 1024 * 1024
    piece = bytes(1024 * 1024)  # one reused megabyte: the test itself holds no 100 MB
    last = piece + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    scanner = MessageScanner(note=b"C", keep=b"Z")
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        assert scanner.feed(header(b"D", declared_body + 4)) == []
        assert not scanner.at_boundary
        for _ in range(declared_body // len(piece) - 1):
            assert scanner.feed(piece) == []
            assert not scanner.at_boundary
        # The last megabyte of the row arrives with the messages after it.
        events = scanner.feed(last)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == [(ord("C"), None), (ord("Z"), b"I")]
    assert scanner.at_boundary
    assert scanner.messages == 3
    assert scanner._body is None
    assert peak - baseline < 64 * 1024, f"scanner allocated {peak - baseline} bytes"


def test_scanner_reports_a_noted_100_mb_data_row_once_and_no_body():
    declared_body = 100 * 1024 * 1024
    piece = bytes(4 * 1024 * 1024)
    scanner = MessageScanner(note=b"D")
    assert scanner.feed(header(b"D", declared_body + 4) + piece[:100]) == [(ord("D"), None)]
    fed = 100
    while fed + len(piece) < declared_body:
        assert scanner.feed(piece) == []
        assert not scanner.at_boundary
        fed += len(piece)
    assert scanner.feed(piece[: declared_body - fed]) == []
    assert scanner.at_boundary
    assert scanner._body is None


def test_frontend_scanner_skips_a_large_copy_data_body_in_pieces():
    declared_body = 20 * 1024 * 1024
    piece = bytes(1024 * 1024)
    scanner = MessageScanner(note=QueryCycle.FRONTEND_NOTE, frontend=True)
    assert scanner.feed(header(b"d", declared_body + 4)) == []
    for _ in range(declared_body // len(piece)):
        assert not scanner.at_boundary
        assert scanner.feed(piece) == []
    assert scanner.at_boundary
    assert scanner.feed(msg(b"c")) == [(ord("c"), None)]


def test_backend_scanner_treats_length_0xffffffff_as_a_4_gb_body_to_skip():
    scanner = MessageScanner(keep=b"Z")
    assert scanner.feed(b"D\xff\xff\xff\xff" + b"z" * 1000) == []
    assert not scanner.at_boundary


# --- backend validation --------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_backend_scanner_rejects_length_below_4(length):
    scanner = MessageScanner()
    with pytest.raises(ProtocolViolation, match=f"invalid message length {length}"):
        scanner.feed(msg(b"Z", b"I") + header(b"D", length))


def test_backend_scanner_accepts_any_type_byte():
    scanner = MessageScanner(note=b"\x00~")
    assert scanner.feed(msg(b"\x00") + msg(b"~", b"x")) == [(0, None), (ord("~"), None)]


# --- frontend validation -------------------------------------------------------------


@pytest.mark.parametrize("type_code", [b"Z", b"T", b"\x00", b"\xff", b"q", b"v", b" "])
def test_frontend_scanner_rejects_unknown_type_byte(type_code):
    scanner = MessageScanner(note=QueryCycle.FRONTEND_NOTE, frontend=True)
    with pytest.raises(ProtocolViolation, match="invalid frontend message type"):
        scanner.feed(msg(type_code, b"abc"))
    assert scanner.valid_prefix == 0


def test_frontend_scanner_shows_unprintable_type_byte_escaped():
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation, match=r"\\x00"):
        scanner.feed(msg(b"\x00"))


@pytest.mark.parametrize("type_code", sorted(m.FRONTEND_TYPES))
def test_frontend_scanner_accepts_every_frontend_type(type_code):
    scanner = MessageScanner(note=bytes([type_code]), frontend=True)
    assert scanner.feed(msg(bytes([type_code]), b"body")) == [(type_code, None)]


def test_frontend_scanner_rejects_the_ssl_request_code_mid_stream():
    # An SSLRequest sent after startup starts with 0x00: not a frontend type.
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation):
        scanner.feed(msg(b"S") + m.ssl_request())
    assert scanner.valid_prefix == 5


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_frontend_scanner_rejects_length_below_4(length):
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation, match=f"invalid message length {length} for message type 'S'"):
        scanner.feed(header(b"S", length))
    assert scanner.valid_prefix == 0


@pytest.mark.parametrize("type_code", [b"Q", b"S", b"d", b"X"])
def test_frontend_scanner_rejects_negative_length_read_as_huge(type_code):
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation, match="invalid message length 4294967295"):
        scanner.feed(type_code + b"\xff\xff\xff\xff" + b"rest")
    assert scanner.valid_prefix == 0


@pytest.mark.parametrize("type_code", [b"S", b"H", b"X", b"C", b"D", b"E", b"c", b"f"])
def test_frontend_scanner_rejects_2_gb_length_on_small_limit_type(type_code):
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation, match="invalid message length 2147483648"):
        scanner.feed(header(type_code, 0x8000_0000))


@pytest.mark.parametrize("type_code", [b"Q", b"P", b"B", b"F", b"d", b"p"])
def test_frontend_scanner_rejects_2_gb_length_on_large_limit_type(type_code):
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation, match="invalid message length 2147483648"):
        scanner.feed(header(type_code, 0x8000_0000))


def test_frontend_scanner_rejects_query_just_above_max_alloc_size():
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation):
        scanner.feed(header(b"Q", 0x3FFF_FFFF))


def test_frontend_scanner_accepts_query_header_at_max_alloc_size_minus_one():
    scanner = MessageScanner(note=b"Q", frontend=True)
    assert scanner.feed(header(b"Q", 0x3FFF_FFFE)) == [(ord("Q"), None)]
    assert not scanner.at_boundary


def test_frontend_scanner_accepts_small_type_of_9999_bytes():
    scanner = MessageScanner(note=b"C", frontend=True)
    assert scanner.feed(header(b"C", 9999)) == [(ord("C"), None)]


def test_frontend_scanner_accepts_small_type_with_length_word_10000_like_postgres():
    scanner = MessageScanner(note=b"C", frontend=True)
    assert scanner.feed(header(b"C", 10000)) == [(ord("C"), None)]


def test_frontend_scanner_rejects_small_type_with_length_word_10001():
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation):
        scanner.feed(header(b"C", 10001))


def test_frontend_scanner_valid_prefix_counts_valid_messages_before_bad_header():
    valid = msg(b"Q", b"select 1\0") + msg(b"P", b"\0select 2\0\0\0") + msg(b"S")
    scanner = MessageScanner(note=QueryCycle.FRONTEND_NOTE, frontend=True)
    with pytest.raises(ProtocolViolation):
        scanner.feed(valid + b"Z\0\0\0\5I" + msg(b"S"))
    assert scanner.valid_prefix == len(valid)


def test_frontend_scanner_valid_prefix_includes_tail_of_body_from_previous_chunk():
    query = msg(b"Q", b"select 'a long enough query'\0")
    scanner = MessageScanner(note=b"Q", frontend=True)
    assert scanner.feed(query[:12]) == [(ord("Q"), None)]
    tail = query[12:] + msg(b"S")
    with pytest.raises(ProtocolViolation):
        scanner.feed(tail + header(b"S", 2))
    assert scanner.valid_prefix == len(tail)


def test_frontend_scanner_valid_prefix_counts_from_chunk_start_after_glued_partial_header():
    # The previous chunk ended three bytes into a valid Query header; this chunk
    # completes it, carries one more valid message, then a bad header.
    query = msg(b"Q", b"select 1\0")
    scanner = MessageScanner(note=b"QS", frontend=True)
    assert scanner.feed(msg(b"S") + query[:3]) == [(ord("S"), None)]
    good = query[3:] + msg(b"S")
    with pytest.raises(ProtocolViolation):
        scanner.feed(good + b"\x00\0\0\0\4")
    assert scanner.valid_prefix == len(good)


@pytest.mark.parametrize("glued", [1, 2, 3, 4])
def test_frontend_scanner_valid_prefix_is_zero_when_the_bad_header_itself_was_glued(glued):
    bad = header(b"S", 0x7FFF_FFFF)
    scanner = MessageScanner(frontend=True)
    assert scanner.feed(msg(b"S") + bad[:glued]) == []
    with pytest.raises(ProtocolViolation):
        scanner.feed(bad[glued:] + msg(b"S"))
    assert scanner.valid_prefix == 0


def test_frontend_scanner_valid_prefix_for_bad_header_at_every_position_in_a_stream():
    bad = b"\x16\x03\x01\x02\x00"  # a TLS ClientHello sent where a message belongs
    stream = FRONTEND_STREAM + bad + msg(b"S")
    bad_at = len(FRONTEND_STREAM)
    for cut in range(len(stream) + 1):
        scanner = MessageScanner(note=QueryCycle.FRONTEND_NOTE, keep=FRONTEND_KEEP, frontend=True)
        first, second = stream[:cut], stream[cut:]
        if cut >= bad_at + 5:
            # The whole bad header is in the first chunk.
            with pytest.raises(ProtocolViolation):
                scanner.feed(first)
            assert scanner.valid_prefix == bad_at, cut
            continue
        scanner.feed(first)
        with pytest.raises(ProtocolViolation):
            scanner.feed(second)
        expected = bad_at - cut if cut <= bad_at else 0
        assert scanner.valid_prefix == expected, cut


def test_frontend_violation_carries_the_events_of_the_valid_prefix():
    scanner = MessageScanner(note=QueryCycle.FRONTEND_NOTE, frontend=True)
    with pytest.raises(ProtocolViolation) as caught:
        scanner.feed(msg(b"Q", b"select 1\0") + msg(b"S") + header(b"S", 1))
    assert caught.value.events == [(ord("Q"), None), (ord("S"), None)]


def test_frontend_violation_events_include_a_kept_body_completed_at_the_chunk_start():
    copy_data = msg(b"d", b"row 1\n")
    scanner = MessageScanner(note=QueryCycle.FRONTEND_NOTE, keep=b"d", frontend=True)
    assert scanner.feed(copy_data[:7]) == []
    with pytest.raises(ProtocolViolation) as caught:
        scanner.feed(copy_data[7:] + msg(b"c") + b"Z\0\0\0\4")
    assert caught.value.events == [(ord("d"), b"row 1\n"), (ord("c"), None)]
    assert scanner.valid_prefix == len(copy_data) - 7 + 5


def test_frontend_violation_events_are_empty_when_the_chunk_starts_with_the_bad_header():
    scanner = MessageScanner(note=QueryCycle.FRONTEND_NOTE, frontend=True)
    with pytest.raises(ProtocolViolation) as caught:
        scanner.feed(b"Z\0\0\0\4" + msg(b"Q", b"x\0"))
    assert caught.value.events == []


def test_frontend_violation_on_oversized_kept_type_carries_earlier_events():
    scanner = MessageScanner(note=b"Q", keep=b"d", keep_limit=4, frontend=True)
    with pytest.raises(ProtocolViolation) as caught:
        scanner.feed(msg(b"Q", b"copy\0") + msg(b"d", b"1234") + msg(b"d", b"12345"))
    assert caught.value.events == [(ord("Q"), None), (ord("d"), b"1234")]


def test_frontend_protocol_violation_has_sqlstate_08p01():
    scanner = MessageScanner(frontend=True)
    with pytest.raises(ProtocolViolation) as caught:
        scanner.feed(b"\x00\x00\x00\x00\x08")
    assert caught.value.sqlstate == "08P01"
