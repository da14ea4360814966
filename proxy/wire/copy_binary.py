"""COPY ... FROM STDIN (FORMAT binary) payloads, for loading many vectors fast.

Text formats make the server parse every float of every vector (15 million for 10,000
embeddings of 1536 dimensions); the binary format carries float4 values as they are.
https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4 (file format) and
array_send (src/backend/utils/adt/arrayfuncs.c) for the array layout.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence

from . import messages as m

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)
_FLOAT4_OID = 700
_NULL = struct.pack("!i", -1)

Field = str | Sequence[float] | None


def float4_array(values: Sequence[float]) -> bytes:
    """A one-dimensional real[] in binary send format: header, then (length 4, value) pairs."""
    count = len(values)
    floats = array("f", values)
    if struct.pack("=I", 1) == struct.pack("<I", 1):
        floats.byteswap()  # to network order
    raw = floats.tobytes()
    body = bytearray(8 * count)
    body[3::8] = b"\x04" * count  # each element's int32 length: 0,0,0,4
    for offset in range(4):  # interleave the 4 bytes of each float after its length
        body[4 + offset :: 8] = raw[offset::4]
    return struct.pack("!iiiii", 1, 0, _FLOAT4_OID, count, 1) + bytes(body)


def _field(value: Field) -> bytes:
    if value is None:
        return _NULL
    data = value.encode() if isinstance(value, str) else float4_array(value)
    return struct.pack("!i", len(data)) + data


def copy_data(rows: Iterable[Sequence[Field]], *, chunk: int = 1 << 20) -> bytes:
    """CopyData messages carrying `rows` (str: text or json; sequence: real[]), then CopyDone."""
    out = bytearray()
    pending = bytearray(_SIGNATURE)
    for row in rows:
        pending += struct.pack("!h", len(row))
        for value in row:
            pending += _field(value)
        if len(pending) >= chunk:
            out += m.message(m.COPY_DATA, bytes(pending))
            pending = bytearray()
    pending += _TRAILER
    out += m.message(m.COPY_DATA, bytes(pending))
    out += m.message(m.COPY_DONE)
    return bytes(out)
