"""QueryCycle: owed ReadyForQuery messages, idle state and transaction status."""

from __future__ import annotations

import pytest

from proxy.wire import messages as m
from proxy.wire.cycle import QueryCycle
from proxy.wire.framing import MessageScanner


def client(cycle: QueryCycle, types: str) -> None:
    for t in types:
        cycle.client_message(ord(t))


def server(cycle: QueryCycle, types: str) -> None:
    """Backend messages by type; 'Z' carries status I (use ready() for others)."""
    for t in types:
        cycle.server_message(ord(t), b"I" if t == "Z" else None)


def ready(cycle: QueryCycle, status: bytes = b"I") -> None:
    cycle.server_message(ord("Z"), status)


def test_new_cycle_is_idle_outside_a_transaction():
    cycle = QueryCycle()
    assert cycle.idle
    assert cycle.pending == 0
    assert cycle.status == b"I"
    assert not cycle.in_transaction


def test_simple_query_is_in_flight_until_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "Q")
    assert not cycle.idle
    assert cycle.pending == 1
    server(cycle, "TDDC")
    assert not cycle.idle
    ready(cycle)
    assert cycle.idle


def test_simple_query_with_several_statements_earns_one_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "Q")
    server(cycle, "CCTDC")
    assert not cycle.idle
    ready(cycle)
    assert cycle.idle


def test_simple_query_that_fails_is_answered_by_error_then_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "Q")
    server(cycle, "E")
    assert not cycle.idle
    ready(cycle)
    assert cycle.idle


def test_empty_query_still_earns_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "Q")
    server(cycle, "I")
    assert not cycle.idle
    ready(cycle)
    assert cycle.idle


def test_extended_query_is_not_idle_before_its_sync():
    cycle = QueryCycle()
    client(cycle, "PBDE")
    assert not cycle.idle
    assert cycle.pending == 0
    assert cycle.unsynced


def test_extended_query_with_sync_is_idle_after_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "PBDES")
    assert not cycle.idle
    assert cycle.pending == 1
    assert not cycle.unsynced
    server(cycle, "12TDC")
    assert not cycle.idle
    ready(cycle)
    assert cycle.idle


@pytest.mark.parametrize("extended", "PBDECH")
def test_every_extended_protocol_message_needs_a_sync(extended):
    cycle = QueryCycle()
    client(cycle, extended)
    assert not cycle.idle
    client(cycle, "S")
    ready(cycle)
    assert cycle.idle


def test_pipeline_of_three_syncs_is_idle_only_after_the_third_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "PBES" "BES" "PBES")
    assert cycle.pending == 3
    server(cycle, "12C")
    ready(cycle)
    assert not cycle.idle
    assert cycle.pending == 2
    server(cycle, "2C")
    ready(cycle)
    assert not cycle.idle
    server(cycle, "12C")
    ready(cycle)
    assert cycle.idle


def test_pipeline_answered_while_the_client_is_still_sending_it():
    cycle = QueryCycle()
    client(cycle, "PBES")
    server(cycle, "12C")
    ready(cycle)
    assert cycle.idle
    client(cycle, "PBE")
    assert not cycle.idle
    client(cycle, "S")
    ready(cycle)
    assert cycle.idle


def test_error_inside_a_pipeline_still_costs_one_ready_for_query_per_sync():
    cycle = QueryCycle()
    client(cycle, "PBES" "PBES" "PBES")
    server(cycle, "12C")
    ready(cycle, b"I")
    # The second statement fails; the server skips to the Sync and answers it.
    server(cycle, "E")
    assert not cycle.idle
    ready(cycle, b"I")
    assert not cycle.idle
    assert cycle.pending == 1
    server(cycle, "12C")
    ready(cycle, b"I")
    assert cycle.idle


def test_error_inside_a_pipelined_transaction_leaves_failed_status_until_rollback():
    cycle = QueryCycle()
    client(cycle, "Q" "PBES" "PBES")  # BEGIN; failing statement; another one
    server(cycle, "C")
    ready(cycle, b"T")
    server(cycle, "E")
    ready(cycle, b"E")
    server(cycle, "E")  # "current transaction is aborted"
    ready(cycle, b"E")
    assert cycle.idle
    assert cycle.in_transaction
    assert cycle.status == b"E"
    client(cycle, "Q")  # ROLLBACK
    server(cycle, "C")
    ready(cycle, b"I")
    assert cycle.idle
    assert not cycle.in_transaction


def test_extended_error_without_sync_is_not_idle_until_the_client_syncs():
    cycle = QueryCycle()
    client(cycle, "PBE")
    server(cycle, "E")  # the server now waits for a Sync, discarding everything else
    assert not cycle.idle
    client(cycle, "PBE")
    assert not cycle.idle
    client(cycle, "S")
    ready(cycle)
    assert cycle.idle


def test_asyncpg_style_parse_describe_flush_is_not_idle_until_synced_and_answered():
    cycle = QueryCycle()
    client(cycle, "PDH")  # asyncpg prepares with Flush, not Sync
    assert not cycle.idle
    assert cycle.pending == 0
    server(cycle, "1tT")  # ParseComplete, ParameterDescription, RowDescription
    assert not cycle.idle  # answered, but the statement is not synced
    client(cycle, "S")
    assert not cycle.idle
    assert cycle.pending == 1
    ready(cycle)
    assert cycle.idle


def test_asyncpg_style_bind_execute_after_a_flushed_prepare():
    cycle = QueryCycle()
    client(cycle, "PDH")
    server(cycle, "1tT")
    client(cycle, "BES")
    server(cycle, "2DC")
    assert not cycle.idle
    ready(cycle)
    assert cycle.idle


def test_copy_in_waits_for_copy_done_and_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "Q")  # COPY t FROM STDIN
    server(cycle, "G")
    assert cycle.copy_in
    assert not cycle.idle
    client(cycle, "ddd")
    assert cycle.copy_in
    client(cycle, "c")
    assert not cycle.copy_in
    assert not cycle.idle  # the server still owes CommandComplete and ReadyForQuery
    server(cycle, "C")
    ready(cycle)
    assert cycle.idle


def test_copy_in_ended_by_copy_fail_is_idle_after_error_and_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "Q")
    server(cycle, "G")
    client(cycle, "df")
    assert not cycle.copy_in
    server(cycle, "E")
    assert not cycle.idle
    ready(cycle)
    assert cycle.idle


def test_copy_in_aborted_by_the_server_is_idle_after_its_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "Q")
    server(cycle, "G")
    client(cycle, "d")
    server(cycle, "E")  # bad row: the server gives up on the COPY
    ready(cycle)
    assert not cycle.copy_in
    assert cycle.idle
    client(cycle, "dd")  # CopyData the client had already sent: ignored by the server
    assert cycle.idle


def test_copy_out_needs_no_client_messages():
    cycle = QueryCycle()
    client(cycle, "Q")  # COPY t TO STDOUT
    server(cycle, "H")  # CopyOutResponse
    assert not cycle.copy_in
    server(cycle, "ddc" "C")
    assert not cycle.idle
    ready(cycle)
    assert cycle.idle


def test_copy_both_response_waits_for_client_copy_done():
    cycle = QueryCycle()
    client(cycle, "Q")  # START_REPLICATION
    server(cycle, "W")
    assert cycle.copy_in
    client(cycle, "c")
    assert not cycle.copy_in
    server(cycle, "C")
    ready(cycle)
    assert cycle.idle


def test_extended_protocol_copy_in_as_libpq_sends_it_ends_idle():
    cycle = QueryCycle()
    client(cycle, "PBDES")  # PQexecParams("COPY t FROM STDIN")
    server(cycle, "12n")
    server(cycle, "G")  # the Sync above arrives during copy-in: the server ignores it
    client(cycle, "dd")
    client(cycle, "cS")  # PQputCopyEnd: CopyDone, then Sync because the COPY was extended
    server(cycle, "C")
    ready(cycle)
    assert cycle.idle


def test_sync_sent_during_copy_in_earns_no_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "Q")
    server(cycle, "G")
    client(cycle, "dSHdc")
    server(cycle, "C")
    ready(cycle)
    assert cycle.idle


def test_function_call_earns_a_ready_for_query():
    cycle = QueryCycle()
    client(cycle, "F")
    assert not cycle.idle
    server(cycle, "V")
    ready(cycle)
    assert cycle.idle


def test_terminate_does_not_change_the_cycle():
    cycle = QueryCycle()
    client(cycle, "X")
    assert cycle.idle


def test_password_message_does_not_change_the_cycle():
    cycle = QueryCycle()
    client(cycle, "p")
    assert cycle.idle


def test_ready_for_query_records_transaction_status():
    cycle = QueryCycle()
    client(cycle, "Q")
    ready(cycle, b"T")
    assert cycle.status == b"T"
    assert cycle.in_transaction
    client(cycle, "Q")
    ready(cycle, b"E")
    assert cycle.status == b"E"
    assert cycle.in_transaction
    client(cycle, "Q")
    ready(cycle, b"I")
    assert cycle.status == b"I"
    assert not cycle.in_transaction


def test_ready_for_query_without_body_keeps_previous_status():
    cycle = QueryCycle()
    client(cycle, "Q")
    ready(cycle, b"T")
    client(cycle, "Q")
    cycle.server_message(ord("Z"), None)  # e.g. reported without body
    assert cycle.status == b"T"
    assert cycle.idle


def test_unexpected_ready_for_query_does_not_make_pending_negative():
    cycle = QueryCycle()
    ready(cycle)
    assert cycle.pending == 0
    assert cycle.idle
    client(cycle, "Q")
    assert not cycle.idle


def test_ready_for_query_does_not_settle_unsynced_extended_messages():
    cycle = QueryCycle()
    client(cycle, "QPB")  # a simple query, then extended messages not yet synced
    ready(cycle)
    assert cycle.pending == 0
    assert not cycle.idle


def test_session_note_and_keep_sets_cover_every_type_the_cycle_reacts_to():
    for t in "QSFPBDECHcf":
        assert ord(t) in QueryCycle.FRONTEND_NOTE
    for t in "ZGW":
        assert ord(t) in QueryCycle.BACKEND_KEEP


def test_backend_messages_the_cycle_ignores_change_nothing():
    cycle = QueryCycle()
    client(cycle, "Q")
    for t in "RSKTDCINAE123ntsVHdcv":
        cycle.server_message(ord(t), b"x")
    assert cycle.pending == 1
    assert not cycle.copy_in
    assert cycle.status == b"I"


# --- driven by real byte streams through MessageScanner -------------------------------


def _frontend(*parts: tuple[bytes, bytes]) -> bytes:
    return b"".join(m.message(t, b) for t, b in parts)


def _run(client_stream: bytes, server_stream: bytes, chunk: int) -> QueryCycle:
    cycle = QueryCycle()
    cs = MessageScanner(note=QueryCycle.FRONTEND_NOTE, frontend=True)
    ss = MessageScanner(keep=QueryCycle.BACKEND_KEEP)
    for i in range(0, len(client_stream), chunk):
        for t, _ in cs.feed(client_stream[i : i + chunk]):
            cycle.client_message(t)
    for i in range(0, len(server_stream), chunk):
        for t, body in ss.feed(server_stream[i : i + chunk]):
            cycle.server_message(t, body)
    assert cs.at_boundary and ss.at_boundary
    return cycle


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_cycle_driven_by_scanned_byte_streams_ends_idle_in_transaction(chunk):
    client_stream = _frontend(
        (b"Q", b"begin\0"),
        (b"P", b"s1\0select $1\0\0\0"),
        (b"B", b"\0s1\0\0\0\0\1\0\0\0\1" + b"1" + b"\0\0"),
        (b"E", b"\0\0\0\0\0"),
        (b"S", b""),
        (b"Q", b"copy t from stdin\0"),
        (b"d", b"1\n"),
        (b"c", b""),
    )
    server_stream = b"".join(
        [
            m.message(b"C", b"BEGIN\0"),
            m.ready_for_query(b"T"),
            m.message(b"1"),
            m.message(b"2"),
            m.message(b"D", b"\0\1\0\0\0\1" + b"1"),
            m.message(b"C", b"SELECT 1\0"),
            m.ready_for_query(b"T"),
            m.message(b"G", b"\0\0\1\0\0"),
            m.message(b"C", b"COPY 1\0"),
            m.ready_for_query(b"T"),
        ]
    )
    cycle = _run(client_stream, server_stream, chunk)
    assert cycle.idle
    assert cycle.status == b"T"
    assert cycle.in_transaction


def test_cycle_driven_by_scanned_streams_is_busy_while_answers_are_missing():
    client_stream = _frontend((b"Q", b"select 1\0"), (b"Q", b"select 2\0"))
    server_stream = m.message(b"C", b"SELECT 1\0") + m.ready_for_query()
    cycle = _run(client_stream, server_stream, 4)
    assert cycle.pending == 1
    assert not cycle.idle


def test_cycle_driven_by_scanned_streams_sees_ready_for_query_status():
    server_stream = m.ready_for_query(b"E")
    cycle = _run(_frontend((b"Q", b"x\0")), server_stream, 1)
    assert cycle.status == b"E"
    assert cycle.idle
