"""Where a session stands in the query cycle, from the messages going by.

The relay must know when the server is idle (every message the client sent has been
answered up to a ReadyForQuery) to shut down gracefully, to decide whether a client
that vanished left a query running, and later to run the proxy's own statements in
the client's session. Each Query, Sync and FunctionCall earns exactly one
ReadyForQuery, whatever errors happen in between, so a counter is enough.
"""

from __future__ import annotations

from . import messages as m

_EXTENDED = frozenset(b"PBDECH")  # Parse, Bind, Describe, Execute, Close, Flush
_CYCLE_START = frozenset(b"QSF")  # Query, Sync, FunctionCall: each earns one ReadyForQuery
_COPY_IN_END = frozenset(b"cf")  # CopyDone, CopyFail
_SYNC = m.SYNC[0]
_EXECUTE = m.EXECUTE[0]


class QueryCycle:
    """Counts owed ReadyForQuery messages and remembers the transaction status."""

    __slots__ = ("pending", "unsynced", "executed", "copy_in", "status", "_syncs_since_execute")

    # Frontend types the session must report to `client_message`.
    FRONTEND_NOTE = b"QSFPBDECHcfX"
    # Backend types whose body `server_message` needs.
    BACKEND_KEEP = b"ZGW"

    def __init__(self) -> None:
        self.pending = 0  # ReadyForQuery messages the server still owes
        self.unsynced = False  # extended-protocol messages sent since the last Sync
        # An Execute sent since the last Sync: the batch's implicit transaction has done work
        # that a ROLLBACK of the proxy's own would undo.
        self.executed = False
        self.copy_in = False  # the server is waiting for CopyData from the client
        self.status = b"I"  # transaction status of the last ReadyForQuery: I, T or E
        # Syncs sent after the latest Execute: if that Execute turns out to start a COPY
        # FROM STDIN, the server ignores them ("Ignore Flush/Sync for the convenience of
        # client libraries", copyfromparse.c) and they earn no ReadyForQuery.
        self._syncs_since_execute = 0

    @property
    def idle(self) -> bool:
        """Nothing in flight: the server waits for the client's next message."""
        return self.pending == 0 and not self.unsynced and not self.copy_in

    @property
    def in_transaction(self) -> bool:
        return self.status != b"I"

    def client_message(self, type_code: int) -> None:
        if type_code == _SYNC:
            self.unsynced = False
            self.executed = False
            if not self.copy_in:  # a Sync inside COPY IN is ignored by the server
                self.pending += 1
                self._syncs_since_execute += 1
        elif type_code in _CYCLE_START:
            self.pending += 1
            self._syncs_since_execute = 0
        elif type_code in _EXTENDED:
            if not self.copy_in:  # a Flush inside COPY IN is ignored too
                self.unsynced = True
            if type_code == _EXECUTE:
                self._syncs_since_execute = 0
                self.executed = True
        elif type_code in _COPY_IN_END:
            self.copy_in = False

    def server_message(self, type_code: int, body: bytes | None) -> None:
        if type_code == m.READY_FOR_QUERY[0]:
            if self.pending:
                self.pending -= 1
            self.copy_in = False
            if body:
                self.status = body[:1]
        elif type_code == m.COPY_IN_RESPONSE[0] or type_code == m.COPY_BOTH_RESPONSE[0]:
            self.copy_in = True
            # Syncs already sent behind the Execute that started this COPY are ignored.
            self.pending -= min(self._syncs_since_execute, self.pending)
            self._syncs_since_execute = 0
